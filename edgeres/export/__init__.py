"""``edgeres export``: a trained run -> a self-verifying bundle of ``.tflite`` models.

    export/<name>/model_int8.tflite      full-integer int8, uint8 pixels in, uint8 scores out
                  model_float32.tflite   (and model_float16 / model_dynamic on request)
                  edgeres.json           labels, input, quantization, calibration hash, versions,
                                         verification numbers, the uncertain band, pass/fail, the ExportConfig
                  labels.txt, calibration.txt
                  layer_errors.csv/.png  per-layer int8 error (TF's QuantizationDebugger)

Labels and the same facts are embedded in every ``.tflite`` as TFLite Model Metadata, so
MediaPipe's ImageClassifier reports category names. The bundle is built in a temporary
directory and renamed into place when whole: a Ctrl-C leaves nothing half-written.

The parts, in the order an export runs them: :mod:`.convert` (Keras -> ``.tflite``),
:mod:`.ranges` (int8 activation ranges), :mod:`.quantize` (the only user of TensorFlow's private
APIs), :mod:`.bundle_write`, :mod:`.verify` (LiteRT and the clients), :mod:`.band` (the uncertain
band, from the verification's scores), :mod:`.report` (per layer).
Importing this package does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edgeres import calibrate as calib  # noqa: E402
from edgeres import data as data_lib  # noqa: E402
from edgeres.config import run_resize, versions, write_bytes_atomic, write_json_atomic  # noqa: E402
from edgeres.outputs import check_not_inside  # noqa: E402
from edgeres.export.bundle_write import (BUNDLE_ENTRIES, _replace_dir, _write_models,  # noqa: E402,F401
                                         check_replaceable, clean_stale_partials)
from edgeres.export.convert import (ExportError, Format, Int8Ranges, _converter, _input_quantization,  # noqa: E402,F401
                                    _input_tensor, _io_types, _quiet, _tensor_names, calibrate_model, convert,
                                    convert_int8, float_tensors, representative_dataset)
from edgeres.export.qat_convert import (convert_qat_int8, float_forward, is_qat_run, qat_summary,  # noqa: E402
                                        qat_verification)
from edgeres.export.quantize import activation_tensors, debug_model, quantize, softmax_inputs  # noqa: E402,F401
from edgeres.export.ranges import (DEFAULT_RANGES, GROUP_SIZE, HIST_KEYS, HIST_SAMPLE,  # noqa: E402,F401
                                   LOGITS_MARGIN, PERCENTILE, RANGES, ActivationStats, Ranges, _mean_square, activation_stats,
                                   choose_ranges, mse_range, percentile_range, robust_ranges, value_histogram)
from edgeres.export.report import check_float_layers, layer_error_report, logits_clipped  # noqa: E402,F401
from edgeres.export.band import check_setting, export_band, summary_line  # noqa: E402
from edgeres.export.runtimes import record_runtimes  # noqa: E402
from edgeres.export.runtimes import summary as runtimes_summary  # noqa: E402
from edgeres.export.verify import client_check_python, client_checks, verify, verify_scores  # noqa: E402,F401
from edgeres.preprocess import DEFAULT_RESIZE, LEGACY_RESIZE, RESIZE_SPEC, Resize, load_pixels  # noqa: E402


@dataclass(frozen=True)
class ExportConfig:
    """What an export is asked for (the ``edgeres export`` flags), saved in ``edgeres.json`` as
    ``"config"``; ``resize`` there is the one used."""

    formats: tuple[Format, ...] = (Format.INT8, Format.FLOAT32)
    data: str | None = None  # None: the dataset the run was trained on
    calibration: str | None = None  # a manifest from `edgeres calibrate`; None: draw calibration_size images
    calibration_size: int = calib.RECOMMENDED_SIZE
    ranges: Ranges = DEFAULT_RANGES
    float_layers: tuple[str, ...] = ()  # layers kept in float in the int8 model (names from layer_errors.csv)
    resize: Resize | None = None  # None: the resize the run was trained with
    max_drop: float = 1.0  # int8 accuracy may fall this many percentage points below float32
    verify_limit: int | None = None  # validation images to verify on; None: all
    client_check: bool | None = False  # MediaPipe too; None: when it is found (the CLI default)
    layer_report: bool = True
    seed: int = 0  # of the calibration draw
    uncertain_below: float | str | None = None  # None: the uncertain band measured at export; "off"; a threshold

    def __post_init__(self):
        # Strings from the CLI or JSON become the enums; a bad value fails here, naming it.
        set_ = object.__setattr__
        set_(self, "formats", tuple(dict.fromkeys(Format(f) for f in self.formats)))
        set_(self, "ranges", Ranges(self.ranges))
        set_(self, "resize", Resize(self.resize) if self.resize is not None else None)
        set_(self, "float_layers", tuple(self.float_layers))
        for name in ("data", "calibration"):
            if getattr(self, name) is not None:
                set_(self, name, str(getattr(self, name)))


class QuantizationCheckFailed(ExportError):
    """int8 accuracy fell more than ``max_drop`` points below float; the bundle is marked failing."""

    def __init__(self, report: "ExportReport"):
        v = report.verification
        super().__init__(
            f"int8 accuracy {v['int8']['accuracy']:.2%} is {v['accuracy_drop_pp']:.2f} pp below float32 "
            f"{v['float32']['accuracy']:.2%} (allowed: {report.max_drop:.2f} pp). Bundle {report.bundle} "
            f"is marked failing. " + (
                f"Try --ranges {DEFAULT_RANGES.value} (the default), which keeps rare outlier activations from "
                "stretching int8 ranges, " if report.ranges == Ranges.MINMAX.value else
                "Try a calibration set closer to the images the model will see (edgeres calibrate), ")
            + "or keep the worst layers in float (--float-layers, see layer_errors.csv)."
        )
        self.report = report


@dataclass(frozen=True)
class ExportReport:
    bundle: Path
    formats: tuple[str, ...]
    files: dict[str, dict]
    verification: dict
    passed: bool
    max_drop: float
    seconds: dict[str, float] = field(default_factory=dict)
    worst_layers: list[dict] = field(default_factory=list)
    ranges: str = DEFAULT_RANGES.value
    uncertain: dict = field(default_factory=dict)  # edgeres.json's "uncertain" band
    qat: dict = field(default_factory=dict)  # a QAT run's int8 against its own forward pass (edgeres.json["qat"])
    runtimes: dict | None = None  # edgeres.json["runtimes"]: the int8 model's outputs on each runtime

    def summary(self) -> str:
        lines = [f"Bundle {self.bundle} ({'PASSED' if self.passed else 'FAILED'})"]
        for fmt, info in self.files.items():
            acc = self.verification.get(fmt, {}).get("accuracy")
            lines.append(f"  {info['file']:<24} {info['bytes'] / 1e6:8.2f} MB"
                         + (f"   accuracy {acc:.2%}" if acc is not None else ""))
        v = self.verification
        if "agreement" in v:
            lines.append(f"  int8 vs float32: agreement {v['agreement']:.2%}, accuracy drop "
                         f"{v['accuracy_drop_pp']:+.2f} pp, score |dp| mean {v['mean_abs_prob_diff']:.4f} "
                         f"p99 {v.get('p99_abs_prob_diff', float('nan')):.4f}, size ratio {v['size_ratio']:.3f}  "
                         f"(n={v['n']})")
        if self.runtimes:
            lines.append(f"  {runtimes_summary(self.runtimes)}")
        if self.uncertain:
            lines.append(f"  {summary_line(self.uncertain)}")
        logits = logits_clipped(self.worst_layers)
        if logits is not None:
            lines.append(f"  logits clipped by the int8 range: {logits:.1%} of values (layer report)")
        lines += qat_summary(self.qat) if self.qat else []
        return "\n".join(lines)


def export(
    run_dir: str | Path,
    config: ExportConfig | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = True,
    log=print,
    **settings,
) -> ExportReport:
    """Convert ``run_dir/model.keras``, verify with LiteRT on the validation split, write a bundle.

    ``settings`` are :class:`ExportConfig` fields (``formats=("int8", "float32")``,
    ``calibration_size=300``, ...), applied over ``config``.
    Raises :class:`QuantizationCheckFailed` (after writing the bundle, marked failing) when int8
    accuracy is more than ``max_drop`` percentage points below float32.
    """
    from edgeres.model import load_model

    config = dataclasses.replace(config or ExportConfig(), **settings)
    formats, ranges, float_layers, max_drop = config.formats, config.ranges, config.float_layers, config.max_drop
    run_dir = Path(run_dir)
    run = _load_run(run_dir)
    qat_run = is_qat_run(run)  # its own fake-quant ranges make the int8 model; its forward is the reference
    out = Path(out) if out is not None else Path("export") / run_dir.name
    check_replaceable(out, run_dir, force=force)
    client_python = client_check_python(config.client_check, log)  # a broken interpreter fails now, not after converting
    clean_stale_partials(out)
    labels, size = run["labels"], run["train"]["image_size"]
    config = dataclasses.replace(config, uncertain_below=check_setting(config.uncertain_below, len(labels)))
    trained_with = run_resize(run["train"])
    resize = config.resize if config.resize is not None else trained_with
    config = dataclasses.replace(config, resize=resize)
    if resize is not trained_with:
        log(f"Resize: exporting with '{resize.value}' although the run was trained with '{trained_with.value}' "
            f"(--resize); verification below measures what that costs.")
    elif resize is LEGACY_RESIZE:
        log(f"Resize: this run was trained with Pillow's antialiased resize ('{resize.value}', edgeres 0.1), "
            f"which MediaPipe and other clients do not reproduce; retrain, or export with --resize "
            f"{DEFAULT_RESIZE.value} to give clients the exact pixels.")
    arch = run["train"]["arch"]
    timings = {}

    t = time.perf_counter()
    if qat_run:
        import edgeres.qat_model  # noqa: F401 -- registers the layers a QAT run saves
    model = load_model(run_dir / "model.keras")
    if float_layers:
        if Format.INT8 not in formats:
            raise ExportError("--float-layers keeps layers of the int8 model in float: add --int8, or drop it.")
        check_float_layers(model, float_layers, run_dir)
    # The run's own dataset unless told otherwise: calibration and verification must match training.
    root = data_lib.resolve_run_data(run, run_dir, config.data, log=log)
    check_not_inside(out, root, "--out", "--data", "a bundle's PNGs there would be read as a class of photos")
    dataset = data_lib.scan(root, val_fraction=run["train"].get("val_fraction", 0.2),
                            seed=run["train"].get("seed", 0), progress=progress)
    if tuple(dataset.classes) != tuple(labels):
        raise ExportError(f"The dataset at {root} has classes {dataset.classes}, the run was trained on {labels}.")
    timings["load"] = time.perf_counter() - t

    calibration_set = None
    if Format.INT8 in formats:
        calibration_set = (calib.load(config.calibration, root) if config.calibration else
                           calib.draw(dataset, config.calibration_size, seed=config.seed))
        calibration_set = dataclasses.replace(calibration_set, resize=resize.value)
        log(f"Calibration: {len(calibration_set.entries)} images {calibration_set.class_counts()} "
            f"(manifest sha256 {calibration_set.sha256[:12]}), "
            + ("runtime probes only: the QAT run's own int8 ranges" if qat_run else f"{ranges.value} ranges"))

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        converted, chosen = {}, None
        # float32 first: the int8 model is quantized from it.
        for fmt in sorted(formats, key=lambda f: f is Format.INT8):
            t = time.perf_counter()
            if fmt is Format.INT8 and qat_run:
                model_bytes = convert_qat_int8(model, float_layers=float_layers)
            elif fmt is Format.INT8:
                float32 = converted.get(Format.FLOAT32.value, {}).get("raw")
                model_bytes, chosen = convert_int8(model, calibration_set, size, float_layers=float_layers,
                                                   ranges=ranges, progress=progress, float_model=float32)
            else:
                with float_forward(model):  # a QAT run's float formats: its weights, no fake quant
                    model_bytes = convert(model, fmt, size=size)
            timings[f"convert_{fmt.value}"] = time.perf_counter() - t
            if fmt is Format.INT8:
                offenders = float_tensors(model_bytes)
                if offenders and not float_layers:
                    raise ExportError(f"int8 model still has {len(offenders)} float tensor(s), e.g. "
                                      f"{offenders[:3]}: full-integer quantization failed.")
            converted[fmt.value] = {"file": f"model_{fmt.value}.tflite", "raw": model_bytes}
            log(f"Converted {fmt.value} in {timings[f'convert_{fmt.value}']:.1f} s ({len(model_bytes) / 1e6:.2f} MB)")
        converted = {fmt.value: converted[fmt.value] for fmt in formats}

        meta = {
            "name": out.name, "labels": list(labels), "arch": arch,
            "input": {"size": [size, size], "layout": "NHWC", "channels": "RGB",
                      "resize": resize.value, "resize_rule": RESIZE_SPEC[resize],
                      "normalization": "inside the graph: feed raw pixels"},
            "run": {"path": str(run_dir.resolve()), "dataset_sha256": run.get("dataset_sha256"),
                    "train": run["train"]},
            "calibration": None if calibration_set is None else {
                "file": "calibration.txt", "sha256": calibration_set.sha256, "images": len(calibration_set.entries),
                "per_class": calibration_set.class_counts(), "seed": calibration_set.seed,
                "ranges": ranges.value, "ranges_method": RANGES[ranges],
                "float_layers": list(float_layers)} | ({"ranges": "qat", "ranges_method": "the QAT run's own "
                "fake-quant ranges; these images are the runtime probes only"} if qat_run else {}),
            "versions": versions(),
        }
        if calibration_set is not None:
            calibration_set.save(tmp / "calibration.txt")
            # A few real photos as the model sees them: the probes an accelerator is checked on at
            # load (edgeres.runtime's self-check), so a GPU that computes garbage is caught.
            from edgeres.runtime import PROBES_FILE, write_probes

            write_probes(tmp / PROBES_FILE, np.stack([load_pixels(p, size, resize) for p in calibration_set.paths[:6]]))
        write_bytes_atomic(tmp / "labels.txt", "".join(label + "\n" for label in labels).encode())
        files = {fmt: {"file": info["file"], "bytes": n}
                 for (fmt, info), n in zip(converted.items(), _write_models(tmp, converted, meta, labels, size).values())}

        t = time.perf_counter()
        log(f"Verifying {len(files)} model(s) with LiteRT on the validation split ...")
        verification, evaluation = verify_scores(tmp, files, dataset, limit=config.verify_limit, threads=threads,
                                                 progress=progress)
        timings["verify"] = time.perf_counter() - t
        runtimes = None
        if "int8" in files:  # what XNNPACK and the built-in kernels compute, for `edgeres check`
            t = time.perf_counter()
            runtimes = record_runtimes(
                tmp, files["int8"]["file"], self_check_photos=calibration_set.paths,
                validation=[s.path for s in dataset.validation.samples], root=root, size=size, resize=resize,
                limit=config.verify_limit, threads=threads, progress=progress, log=log)
            timings["runtimes"] = time.perf_counter() - t
        t = time.perf_counter()
        meta["uncertain"] = export_band(tmp, files, evaluation, config.uncertain_below, threads=threads,
                                        runtimes=runtimes, log=log)
        timings["uncertain_band"] = time.perf_counter() - t
        clients = client_checks(tmp, files, dataset, limit=config.verify_limit, python=client_python,
                                enabled=config.client_check, log=log)
        if qat_run and "int8" in files:
            t = time.perf_counter()
            meta["qat"] = qat_verification(run_dir, run, tmp, files["int8"]["file"], dataset,
                                           limit=config.verify_limit, threads=threads, progress=progress, log=log)
            timings["verify_qat"] = time.perf_counter() - t
        passed = not ("accuracy_drop_pp" in verification and verification["accuracy_drop_pp"] > max_drop)
        worst = []
        if config.layer_report and chosen is not None:
            t = time.perf_counter()
            log("Per-layer int8 error report (QuantizationDebugger) ...")
            worst = layer_error_report(model, chosen, calibration_set, size, tmp)
            timings["layer_report"] = time.perf_counter() - t

        meta.update(models={k: {"file": v["file"]} for k, v in files.items()},
                    verification=verification, clients=clients, max_drop_pp=max_drop,
                    status="passed" if passed else "failed", worst_layers=worst[:10],
                    seconds={k: round(v, 2) for k, v in timings.items()})
        # The measured numbers go inside each .tflite too, then into edgeres.json beside them.
        sizes = _write_models(tmp, converted, meta, labels, size)
        # Sizes of the files as finally written (the embedded metadata changes them, so they
        # cannot be inside the files themselves).
        for fmt, n in sizes.items():
            meta["models"][fmt]["bytes"] = n
            if isinstance(verification.get(fmt), dict):
                verification[fmt]["bytes"] = n
        if "size_ratio" in verification and "int8" in sizes and "float32" in sizes:
            verification["size_ratio"] = sizes["int8"] / sizes["float32"]
        if runtimes is not None:  # beside the files, not inside them (their outputs were measured on them)
            meta["runtimes"] = runtimes
        meta["config"] = config  # what was asked, beside what came out (not inside the .tflite files)
        write_json_atomic(tmp / "edgeres.json", meta)
        if not passed:
            (tmp / "FAILED").write_text(f"int8 accuracy dropped {verification['accuracy_drop_pp']:.2f} pp "
                                        f"(allowed {max_drop:.2f}). See edgeres.json.\n")
        _replace_dir(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = ExportReport(out, tuple(f.value for f in formats), meta["models"], verification, passed, max_drop,
                          meta["seconds"], worst, ranges.value, meta["uncertain"], meta.get("qat") or {},
                          meta.get("runtimes"))
    if not passed:
        raise QuantizationCheckFailed(report)
    return report


def _load_run(run_dir: Path) -> dict:
    config = run_dir / "config.json"
    if not (run_dir / "model.keras").is_file() or not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished edgeres run (needs model.keras and config.json). "
                                f"Train one with: edgeres train --out {run_dir}")
    from edgeres.run_files import EXPORT_FIELDS, read_run_config

    return read_run_config(run_dir, fix=f"Restore it from a copy; without it {run_dir} cannot be exported.",
                           fields=EXPORT_FIELDS)
