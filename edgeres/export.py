"""``edgeres export``: a trained run -> a self-verifying bundle of ``.tflite`` models.

    export/<name>/model_int8.tflite      full-integer int8, uint8 pixels in, uint8 scores out
                  model_float32.tflite   (and model_float16 / model_dynamic on request)
                  edgeres.json           labels, input, quantization, calibration hash, versions,
                                         verification numbers, pass/fail
                  labels.txt, calibration.txt
                  layer_errors.csv/.png  per-layer int8 error (TF's QuantizationDebugger)

Labels and the same facts are embedded in every ``.tflite`` as TFLite Model Metadata, so
MediaPipe's ImageClassifier reports category names. The bundle is built in a temporary
directory and renamed into place when whole: a Ctrl-C leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edgeres import calibrate as calib  # noqa: E402
from edgeres import data as data_lib  # noqa: E402
from edgeres.config import run_resize, versions, write_bytes_atomic, write_json_atomic  # noqa: E402
from edgeres.metadata import embed_metadata  # noqa: E402
from edgeres.preprocess import DEFAULT_RESIZE, LEGACY_RESIZE, RESIZE_SPEC, Resize, load_pixels  # noqa: E402

TFLITE_FLOAT32, TFLITE_UINT8 = 0, 3  # TensorType values in the TFLite schema


class Format(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights, float32 compute on CPU; halves the file
    DYNAMIC = "dynamic"  # int8 weights, float activations: no calibration needed
    INT8 = "int8"  # full integer: int8 weights and activations, uint8 I/O


# What each format is and takes (Ultralytics-style table; `edgeres export --help` prints it).
FORMATS = {
    Format.FLOAT32: "reference; float32 input 0..255",
    Format.FLOAT16: "float16 weights; float32 input 0..255",
    Format.DYNAMIC: "int8 weights, float activations; float32 input 0..255",
    Format.INT8: "full integer; uint8 pixels in, uint8 scores out; needs calibration",
}


class Ranges(str, Enum):
    """How int8 activation ranges are taken from the calibration images."""

    RELATIVE_MSE = "relative-mse"  # per tensor, the clip range with the least int8 error relative to each image's signal
    MSE = "mse"  # per tensor, the clip range with the least int8 error on its calibration values
    PERCENTILE = "percentile"  # the 0.01th and 99.99th percentiles of each tensor's calibration values
    ROBUST = "robust"  # each image's exact min/max, median over groups of images
    MINMAX = "minmax"  # TensorFlow's calibrator: global min/max over every image


DEFAULT_RANGES = Ranges.RELATIVE_MSE  # benchmarks/reference.md, "Activation range rules"
GROUP_SIZE = 10  # images per group for Ranges.ROBUST
PERCENTILE = 99.99  # for Ranges.PERCENTILE
RANGES = {
    Ranges.RELATIVE_MSE: "per tensor, the clip range that minimises the int8 error (clipping + rounding) of its "
                         "values relative to each calibration image's own signal, summed over images (from "
                         "histograms), so a few images with huge activations do not set the range; the logits "
                         "keep their full range",
    Ranges.MSE: "per tensor, the clip range that minimises the int8 error (clipping + rounding) of its "
                "values over all calibration images (from a histogram); the logits keep their full range",
    Ranges.PERCENTILE: f"per tensor, the {100 - PERCENTILE:g}th and {PERCENTILE:g}th percentiles of its values over "
                       "all calibration images; the logits keep their full range",
    Ranges.ROBUST: "each image's exact min/max per tensor, then the median over groups of "
                   f"{GROUP_SIZE} images: a rare outlier image cannot stretch a range",
    Ranges.MINMAX: "TensorFlow's calibrator: global min/max, so one outlier image widens a range for all",
}


class ExportError(RuntimeError):
    pass


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
        logits = logits_clipped(self.worst_layers)
        if logits is not None:
            lines.append(f"  logits clipped by the int8 range: {logits:.1%} of values (layer report)")
        return "\n".join(lines)


def export(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    formats: tuple[Format | str, ...] = (Format.INT8, Format.FLOAT32),
    data: str | Path | None = None,
    calibration: str | Path | None = None,
    calibration_size: int = calib.RECOMMENDED_SIZE,
    max_drop: float = 1.0,
    float_layers: tuple[str, ...] = (),
    ranges: Ranges | str = DEFAULT_RANGES,
    force: bool = False,
    verify_limit: int | None = None,
    resize: Resize | str | None = None,
    client_check: bool | None = False,  # None: when MediaPipe is found (the CLI default)
    layer_report: bool = True,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    log=print,
) -> ExportReport:
    """Convert ``run_dir/model.keras``, verify with LiteRT on the validation split, write a bundle.

    Raises :class:`QuantizationCheckFailed` (after writing the bundle, marked failing) when int8
    accuracy is more than ``max_drop`` percentage points below float32.
    """
    from edgeres.model import load_model

    run_dir = Path(run_dir)
    formats = tuple(dict.fromkeys(Format(f) for f in formats))
    run = _load_run(run_dir)
    out = Path(out) if out is not None else Path("export") / run_dir.name
    check_replaceable(out, run_dir, force=force)
    clean_stale_partials(out)
    labels, size = run["labels"], run["train"]["image_size"]
    trained_with = run_resize(run["train"])
    resize = Resize(resize) if resize is not None else trained_with
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
    model = load_model(run_dir / "model.keras")
    # The run's own dataset unless told otherwise: calibration and verification must match training.
    root = data_lib.resolve_run_data(run, run_dir, data, log=log)
    dataset = data_lib.scan(root, val_fraction=run["train"].get("val_fraction", 0.2),
                            seed=run["train"].get("seed", 0), progress=progress)
    if tuple(dataset.classes) != tuple(labels):
        raise ExportError(f"The dataset at {root} has classes {dataset.classes}, the run was trained on {labels}.")
    timings["load"] = time.perf_counter() - t

    calibration_set = None
    if Format.INT8 in formats:
        calibration_set = calib.load(calibration, root) if calibration else calib.draw(dataset, calibration_size, seed=seed)
        calibration_set = dataclasses.replace(calibration_set, resize=resize.value)
        log(f"Calibration: {len(calibration_set.entries)} images {calibration_set.class_counts()} "
            f"(manifest sha256 {calibration_set.sha256[:12]}), {Ranges(ranges).value} ranges")

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files, calibrated = {}, None
        for fmt in formats:
            t = time.perf_counter()
            if fmt is Format.INT8:
                model_bytes, calibrated = convert_int8(model, calibration_set, size, float_layers=float_layers,
                                                       ranges=ranges, progress=progress)
            else:
                model_bytes = convert(model, fmt, size=size)
            timings[f"convert_{fmt.value}"] = time.perf_counter() - t
            if fmt is Format.INT8:
                offenders = float_tensors(model_bytes)
                if offenders and not float_layers:
                    raise ExportError(f"int8 model still has {len(offenders)} float tensor(s), e.g. "
                                      f"{offenders[:3]}: full-integer quantization failed.")
            files[fmt.value] = {"file": f"model_{fmt.value}.tflite", "raw": model_bytes}
            log(f"Converted {fmt.value} in {timings[f'convert_{fmt.value}']:.1f} s ({len(model_bytes) / 1e6:.2f} MB)")

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
                "ranges": Ranges(ranges).value, "ranges_method": RANGES[Ranges(ranges)],
                "float_layers": list(float_layers)},
            "versions": versions(),
        }
        if calibration_set is not None:
            calibration_set.save(tmp / "calibration.txt")
            # A few real photos as the model sees them: the probes an accelerator is checked on at
            # load (edgeres.runtime's self-check), so a GPU that computes garbage is caught.
            from edgeres.runtime import PROBES_FILE, write_probes

            write_probes(tmp / PROBES_FILE, np.stack([load_pixels(p, size, resize) for p in calibration_set.paths[:6]]))
        write_bytes_atomic(tmp / "labels.txt", "".join(label + "\n" for label in labels).encode())
        _write_models(tmp, files, meta, labels, size)

        t = time.perf_counter()
        log(f"Verifying {len(files)} model(s) with LiteRT on the validation split ...")
        verification = verify(tmp, files, dataset, limit=verify_limit, threads=threads, progress=progress)
        timings["verify"] = time.perf_counter() - t
        clients = _client_checks(tmp, files, dataset, limit=verify_limit, enabled=client_check, log=log)
        passed = not ("accuracy_drop_pp" in verification and verification["accuracy_drop_pp"] > max_drop)
        worst = []
        if layer_report and calibrated is not None:
            t = time.perf_counter()
            log("Per-layer int8 error report (QuantizationDebugger) ...")
            worst = layer_error_report(model, calibrated, calibration_set, size, tmp)
            timings["layer_report"] = time.perf_counter() - t

        meta.update(models={k: {"file": v["file"]} for k, v in files.items()},
                    verification=verification, clients=clients, max_drop_pp=max_drop,
                    status="passed" if passed else "failed", worst_layers=worst[:10],
                    seconds={k: round(v, 2) for k, v in timings.items()})
        # The measured numbers go inside each .tflite too, then into edgeres.json beside them.
        _write_models(tmp, files, meta, labels, size)
        # Sizes of the files as finally written (the embedded metadata changes them, so they
        # cannot be inside the files themselves).
        for fmt, info in files.items():
            meta["models"][fmt]["bytes"] = info["bytes"]
            if isinstance(verification.get(fmt), dict):
                verification[fmt]["bytes"] = info["bytes"]
        if "size_ratio" in verification and "int8" in files and "float32" in files:
            verification["size_ratio"] = files["int8"]["bytes"] / files["float32"]["bytes"]
        write_json_atomic(tmp / "edgeres.json", meta)
        if not passed:
            (tmp / "FAILED").write_text(f"int8 accuracy dropped {verification['accuracy_drop_pp']:.2f} pp "
                                        f"(allowed {max_drop:.2f}). See edgeres.json.\n")
        _replace_dir(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = ExportReport(out, tuple(f.value for f in formats), meta["models"], verification, passed, max_drop,
                          meta["seconds"], worst, Ranges(ranges).value)
    if not passed:
        raise QuantizationCheckFailed(report)
    return report


def _client_checks(bundle: Path, files: dict, dataset: data_lib.Dataset, *, limit: int | None,
                   enabled: bool | None, log) -> dict:
    """The deployed model through MediaPipe ImageClassifier (decoding and resizing itself, as an
    app does) against edgeres on the same validation files. ``enabled=None``: when MediaPipe is found."""
    from edgeres.clients import ClientError, check_mediapipe, find_mediapipe_python
    from edgeres.runtime import Classifier

    fmt = "int8" if "int8" in files else next(iter(files))
    if enabled is False:
        return {}
    if find_mediapipe_python() is None:
        if enabled:
            raise ExportError("--client-check needs MediaPipe; see `edgeres evaluate --help` (--client).")
        log("Client check skipped: no MediaPipe interpreter (set $EDGERES_MEDIAPIPE_PYTHON to check the "
            "model in MediaPipe Tasks too).")
        return {}
    items = [(s.path, s.label) for s in dataset.validation.samples]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    log(f"Client check: {fmt} model through MediaPipe ImageClassifier on {len(items)} validation images ...")
    try:
        check = check_mediapipe(Classifier(bundle / files[fmt]["file"], accelerator="cpu"), items, tuple(dataset.classes))
    except ClientError as e:
        if enabled:
            raise ExportError(str(e)) from e
        log(f"Client check failed to run: {e}")
        return {}
    log(f"  {check.summary()}")
    return {"mediapipe": {**check.to_dict(), "format": fmt, "model": files[fmt]["file"]}}


def _load_run(run_dir: Path) -> dict:
    config = run_dir / "config.json"
    if not (run_dir / "model.keras").is_file() or not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished edgeres run (needs model.keras and config.json). "
                                f"Train one with: edgeres train --out {run_dir}")
    return json.loads(config.read_text())


def _write_models(tmp: Path, files: dict, meta: dict, labels, size: int) -> None:
    extra = json.dumps({k: v for k, v in meta.items() if k != "run"}, default=str)
    for fmt, info in files.items():
        blob = embed_metadata(
            info["raw"], labels=list(labels), name=f"{meta['name']} ({fmt})",
            description=f"edgeres {meta['arch']} image classifier, {fmt}. Input: RGB pixels "
                        f"{size}x{size}, 0..255, normalisation inside the graph. Resize: "
                        f"{meta['input']['resize_rule']}.",
            input_size=size, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
            version=meta["versions"].get("edgeres", ""), extra_json=extra)
        write_bytes_atomic(tmp / info["file"], blob)
        info["bytes"] = len(blob)


# What an export writes into a bundle, and what `edgeres evaluate --report` may add to it: the
# only entries `--force` will delete. Anything else in the folder means it is not (only) ours.
BUNDLE_ENTRIES = ("edgeres.json", "labels.txt", "calibration.txt", "FAILED", "probes.npz",
                  "model_*.tflite", "layer_errors.*", "client_check.json")


def check_replaceable(out: Path, run_dir: Path, *, force: bool) -> None:
    """Refuse to touch ``out`` unless it is absent, or ``force`` and it is an edgeres bundle only.

    ``--force`` once deleted whatever ``--out`` named (the training run itself, a parent folder of
    bundles): now it replaces a directory only when it holds ``edgeres.json`` and nothing but the
    files an export or an evaluation report writes.
    """
    out, run_dir = Path(out), Path(run_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FileExistsError(f"Bundle {out} already exists. Pass --force to replace it, or choose another --out.")
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise FileExistsError(f"--out {out} is the training run {run_dir} or a folder above it; "
                              f"--force replaces only an export bundle. Choose another --out.")
    if not out.is_dir() or not (out / "edgeres.json").is_file():
        raise FileExistsError(f"--out {out} exists and is not an edgeres bundle (no edgeres.json); "
                              f"--force replaces only bundles. Choose another --out or remove it yourself.")
    if (out / "model.keras").exists() or (out / "config.json").exists():
        raise FileExistsError(f"--out {out} holds a training run (model.keras/config.json); "
                              f"--force replaces only an export bundle. Choose another --out.")
    foreign = sorted(p.name for p in out.iterdir() if not _is_bundle_entry(p))
    if foreign:
        raise FileExistsError(f"--out {out} holds files an export did not write ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); --force will not delete them. "
                              f"Move them out or choose another --out.")


def _is_bundle_entry(path: Path) -> bool:
    import fnmatch

    if path.is_symlink():
        return False
    if path.is_dir():  # an `edgeres evaluate --report DIR` folder inside the bundle
        return (path / "report.json").is_file() and all(
            p.is_file() and not p.is_symlink() and p.suffix in (".json", ".csv", ".png") for p in path.iterdir())
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in BUNDLE_ENTRIES)


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID`` / ``.NAME.old-PID`` folders left by exports that were killed."""
    removed = []
    parent = Path(out).parent
    if not parent.is_dir():
        return removed
    for leftover in parent.glob(f".{Path(out).name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not kind.endswith((".partial", ".old")) or not pid.isdigit() or not leftover.is_dir():
            continue
        if _process_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _replace_dir(tmp: Path, out: Path, *, force: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if force and out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    # Without --force the name is claimed atomically: rename(2) fails on a non-empty directory,
    # so of two exports racing to the same --out exactly one wins and the other says so.
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"Bundle {out} was created by another export while this one ran; "
                              f"nothing was replaced. Pass --force to replace it, or choose another --out.")
    try:
        tmp.rename(out)
    except OSError as e:
        raise FileExistsError(f"Bundle {out} was created by another export while this one ran; "
                              f"nothing was replaced ({e.strerror}).") from e


# -- conversion ----------------------------------------------------------------------


def representative_dataset(calibration_set: calib.CalibrationSet, size: int, limit: int | None = None):
    """Calibration images exactly as the runtime sees them, as float32 ``[1, S, S, 3]``."""
    paths = calibration_set.paths[:limit] if limit else calibration_set.paths

    def gen():
        for p in paths:
            yield [load_pixels(p, size, calibration_set.resize)[None].astype(np.float32)]

    return gen


def _converter(model, fmt: Format, calibration_set, size: int):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt is Format.FLOAT16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt is Format.DYNAMIC:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt is Format.INT8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # per-channel weights by default
        conv.representative_dataset = representative_dataset(calibration_set, size)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv


def convert(model, fmt: Format, calibration_set=None, size: int = 224, *, float_layers=(),
            ranges: Ranges | str = DEFAULT_RANGES, progress: bool = False) -> bytes:
    """Convert a Keras classifier to ``.tflite`` bytes in ``fmt``."""
    fmt = Format(fmt)
    if fmt is Format.INT8:
        return convert_int8(model, calibration_set, size, float_layers=float_layers, ranges=ranges,
                            progress=progress)[0]
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        return _converter(model, fmt, calibration_set, size).convert()


def convert_int8(model, calibration_set, size: int, *, float_layers=(), ranges: Ranges | str = DEFAULT_RANGES,
                 progress: bool = False) -> tuple[bytes, bytes]:
    """Full-integer int8 ``.tflite`` (uint8 in and out), and the calibrated float model it came from."""
    if calibration_set is None:
        raise ExportError("int8 export needs a calibration set.")
    with warnings.catch_warnings(), _calibration_progress(calibration_set, progress) as advance, _quiet():
        warnings.simplefilter("ignore")
        calibrated = calibrate_model(model, calibration_set, size, ranges=ranges, advance=advance)
        nodes = ()
        if float_layers:
            nodes = [name for name in _tensor_names(calibrated) if any(layer in name for layer in float_layers)]
            if not nodes:
                raise ExportError(f"--float-layers {', '.join(float_layers)} matched no layer; "
                                  f"use names from layer_errors.csv (e.g. conv5_block3_3_conv).")
        blob = quantize(calibrated, float_nodes=nodes)
    if float_layers and _io_types(blob) != (TFLITE_UINT8, TFLITE_UINT8):
        raise ExportError(f"Keeping {', '.join(float_layers)} in float leaves the model without uint8 "
                          f"input/output; keep layers other than the first and the last in float.")
    if _input_quantization(blob) != (1.0, 0):
        raise ExportError(f"The int8 model's input quantization is {_input_quantization(blob)}, not raw "
                          f"pixels (scale 1, zero point 0); apps feeding image bytes would be wrong.")
    return blob, calibrated


@contextlib.contextmanager
def _calibration_progress(calibration_set, enabled: bool):
    """A progress bar over calibration images, drawn on the real stderr while the converter's
    own output is silenced (calibration is most of an int8 export's time)."""
    if not enabled or calibration_set is None:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with os.fdopen(os.dup(2), "w") as stream, Progress(console=Console(file=stream), transient=True) as bar:
        task = bar.add_task("Calibrating int8 ranges", total=len(calibration_set.entries))
        yield lambda: bar.advance(task)


# -- activation ranges -------------------------------------------------------------------
#
# TensorFlow's calibrator keeps one global min/max per tensor over all calibration images.
# On from-scratch ResNet-50 runs here that cost up to 11 pp of int8 accuracy, for two reasons
# (benchmarks/reference.md):
#   * per-image maxima are heavy-tailed: in conv5_block3_3_bn the median image peaks at 0.2 and
#     the worst of 300 at 127, so a global range leaves the typical image a few int8 steps;
#   * the calibrator over-states the range of a conv that feeds a residual ADD (449.6 logged
#     where Keras and LiteRT both give 127.1 on the same 300 images).
# So edgeres runs the float model through LiteRT with every tensor kept, and records per tensor
# each image's exact min/max and a histogram of all its values. The rules (Ranges) turn those
# into one range per tensor. The median-of-groups rule (robust) fixed the weak runs but clipped
# 12% of a confident model's logits; the MSE rule chooses, per tensor, the clip range that
# costs the least int8 error on the values actually seen, and the logits are never clipped.


def calibrate_model(model, calibration_set, size: int, *, ranges: Ranges | str = DEFAULT_RANGES,
                    advance=None) -> bytes:
    """A float ``.tflite`` that carries one activation range (min/max) per tensor, for :func:`quantize`."""
    ranges = Ranges(ranges)
    conv = _converter(model, Format.INT8, calibration_set, size)
    conv._experimental_calibrate_only = True  # noqa: SLF001 - what TF's QuantizationDebugger uses
    images = representative_dataset(calibration_set, size)
    if ranges is Ranges.MINMAX:
        conv.representative_dataset = (lambda: (advance() or x for x in images())) if advance else images
        calibrated = conv.convert()
        tensors = _ranged_tensors(calibrated)
        lo, hi = _ranges_of(calibrated, tensors)
    else:
        # One image gives the calibrated graph (every range slot in place); the ranges come next.
        conv.representative_dataset = representative_dataset(calibration_set, size, 1)
        calibrated = conv.convert()
        tensors = _ranged_tensors(calibrated)
        stats = activation_stats(calibrated, tensors, (x[0] for x in images()), advance=advance,
                                 histograms=ranges is not Ranges.ROBUST)
        lo, hi = choose_ranges(ranges, stats, output_side=_softmax_inputs(calibrated, tensors))
    # Pixels are 0..255 by definition, whatever the calibration images' brightness: pinning the
    # input range makes the uint8 input the raw byte (scale 1, zero point 0), which is what
    # MediaPipe, the examples and edgeres.json's "feed raw pixels" rely on.
    pixels = _input_tensor(calibrated)
    if pixels in tensors:
        lo[tensors.index(pixels)], hi[tensors.index(pixels)] = 0.0, 255.0
    return _with_ranges(calibrated, tensors, lo, hi)


@dataclass(frozen=True)
class ActivationStats:
    """What the calibration images did to each ranged tensor."""

    lo: np.ndarray  # [images, tensors]: each image's exact minimum
    hi: np.ndarray  # [images, tensors]: each image's exact maximum
    histograms: np.ndarray | None = None  # [tensors, HIST_KEYS] value counts over all images (see value_histogram)
    # The same, each image's counts divided by that image's mean square of the tensor: an error
    # summed over this is each image's noise-to-signal ratio, summed over images.
    relative: np.ndarray | None = None


def activation_stats(model_bytes: bytes, tensors: list[int], images, *, advance=None,
                     threads: int | None = None, histograms: bool = True) -> ActivationStats:
    """Per-image min and max of each tensor in ``tensors`` (and a histogram of all its values),
    from the float model run by LiteRT with every intermediate tensor kept."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes, num_threads=threads or os.cpu_count() or 1,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    lo, hi = [], []
    counts = np.zeros((len(tensors), HIST_KEYS), np.int64) if histograms else None
    relative = np.zeros((len(tensors), HIST_KEYS), np.float64) if histograms else None
    for x in images:
        interp.set_tensor(index, x)
        interp.invoke()
        values = [interp.get_tensor(t) for t in tensors]
        lo.append([v.min() for v in values])
        hi.append([v.max() for v in values])
        if histograms:
            for j, v in enumerate(values):
                h = value_histogram(v, HIST_SAMPLE, extremes=(lo[-1][j], hi[-1][j]))
                counts[j] += h
                power = _mean_square(v, HIST_SAMPLE)
                if power > 0:
                    relative[j] += h / power
        if advance:
            advance()
    return ActivationStats(np.asarray(lo, np.float32), np.asarray(hi, np.float32), counts, relative)


def _mean_square(values: np.ndarray, sample: int) -> float:
    """Mean of the squared values, over the same sample :func:`value_histogram` bins."""
    flat = values.reshape(-1)
    if flat.size > sample:
        stride = -(-flat.size // sample) | 1
        flat = flat[stride // 2::stride]
    return float(np.dot(flat, flat)) / max(1, flat.size)


def choose_ranges(rule: Ranges | str, stats: ActivationStats, *, output_side=()) -> tuple[np.ndarray, np.ndarray]:
    """One ``(lo, hi)`` per tensor by ``rule``. ``output_side``: positions (in ``stats``) of the
    tensors that feed the softmax; the histogram rules give them their full observed range,
    since a clipped logit makes every confident photo show the same score."""
    rule = Ranges(rule)
    if rule is Ranges.ROBUST:
        return robust_ranges(stats.lo, stats.hi)
    observed_lo, observed_hi = stats.lo.min(0).astype(np.float64), stats.hi.max(0).astype(np.float64)
    if rule is Ranges.MINMAX:
        return observed_lo, observed_hi
    if stats.histograms is None:
        raise ValueError(f"--ranges {rule.value} needs value histograms (activation_stats(histograms=True)).")
    pick = percentile_range if rule is Ranges.PERCENTILE else mse_range
    histograms = stats.relative if rule is Ranges.RELATIVE_MSE else stats.histograms
    lo, hi = np.empty_like(observed_lo), np.empty_like(observed_hi)
    for j in range(len(lo)):
        lo[j], hi[j] = pick(histograms[j], observed_lo[j], observed_hi[j])
    for j in output_side:
        lo[j], hi[j] = observed_lo[j], observed_hi[j]
    return lo, hi


def robust_ranges(lo: np.ndarray, hi: np.ndarray, group: int = GROUP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor: split the images into groups of about ``group`` (interleaved), take each
    group's min and max, and return the median over groups. Fewer than ``2 * group`` images
    degrade gracefully to fewer groups; under ``group`` images it is the plain global min/max."""
    n = len(lo)
    k = max(1, n // group)
    members = [np.arange(g, n, k) for g in range(k)]
    return (np.median([lo[m].min(0) for m in members], axis=0),
            np.median([hi[m].max(0) for m in members], axis=0))


# A value histogram bins float32 values by their top bits: sign, exponent and HIST_BITS bits of
# mantissa, so every bin is 1/64 of an octave wide (1.6%) from 1e-38 to 3e38. No range has to
# be known in advance or grown, the same bins serve every tensor, and binning is one shift and
# one bincount. Memory: HIST_KEYS counts a tensor, whatever the number of images. A large
# tensor contributes a fixed-stride sample of HIST_SAMPLE of its values an image, counted
# stride times, plus its exact min and max: binning every value of ResNet-50 at 224 px
# (17.6M values an image) cost 60 ms an image, 18 s for 300 images; ~10M samples a tensor
# over 300 images estimate its error just as well.
HIST_BITS = 6
HIST_KEYS = 1 << (9 + HIST_BITS)  # sign + 8 exponent bits + mantissa bits
HIST_SAMPLE = 1 << 15
_SIDE_KEYS = HIST_KEYS // 2
CANDIDATE_OCTAVES = 24  # the MSE search looks for a clip point down to 2^-24 of the observed extreme


def value_histogram(values: np.ndarray, sample: int | None = None, extremes=None) -> np.ndarray:
    """Counts of ``values`` (float32) per bin: keys ``[0, HIST_KEYS/2)`` hold positive values,
    the rest negative ones, each by magnitude; bin edges come from :func:`_bin_edges`.
    With ``sample``, a tensor of more values contributes every stride-th value (an odd stride,
    so every channel of an NHWC tensor is visited), counted stride times, and its min and max
    (``extremes``, when the caller has them)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    if not sample or flat.size <= sample:
        return np.bincount(flat.view(np.uint32) >> (23 - HIST_BITS), minlength=HIST_KEYS)
    stride = -(-flat.size // sample) | 1
    counts = np.bincount(flat[stride // 2::stride].view(np.uint32) >> (23 - HIST_BITS), minlength=HIST_KEYS)
    counts *= stride
    extremes = extremes if extremes is not None else (flat.min(), flat.max())
    np.add.at(counts, np.array(extremes, np.float32).view(np.uint32) >> (23 - HIST_BITS), 1)
    return counts


def _bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper magnitude of each bin of one sign. Exponent 0 (zero and denormals) has
    edges 0..0: those values are treated as exact zeros; exponent 255 (inf, nan) is dropped."""
    key = np.arange(_SIDE_KEYS)
    exponent, mantissa = key >> HIST_BITS, key & ((1 << HIST_BITS) - 1)
    base = np.ldexp(1.0, exponent - 127)
    lower = base * (1 + mantissa / (1 << HIST_BITS))
    upper = base * (1 + (mantissa + 1) / (1 << HIST_BITS))
    lower[exponent == 0] = upper[exponent == 0] = 0.0
    return lower, upper


_EDGES = _bin_edges()


class _Side:
    """One sign of a histogram (magnitudes), as prefix sums, so that the error of clipping at
    any bin edge, with any step, costs O(log bins). Values are taken uniform within a bin."""

    def __init__(self, counts: np.ndarray):
        keep = np.flatnonzero(counts[: _SIDE_KEYS - (1 << HIST_BITS)])  # no inf / nan
        keep = keep[keep >= (1 << HIST_BITS)]  # zeros and denormals: exact zeros, no error
        a, b, c = _EDGES[0][keep], _EDGES[1][keep], counts[keep].astype(np.float64)
        self.lower, self.upper = a, b
        self.c0 = np.concatenate([[0.0], np.cumsum(c)])
        self.c1 = np.concatenate([[0.0], np.cumsum(c * (a + b) / 2)])
        self.c2 = np.concatenate([[0.0], np.cumsum(c * (a * a + a * b + b * b) / 3)])

    def __len__(self) -> int:
        return len(self.upper)

    def error(self, below: np.ndarray, clip: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Summed squared int8 error of this side's values when the range ends at ``clip``
        (``below``: how many bins lie under it) and one quantization step is ``step``.
        Beyond the clip: (x - clip)^2. Inside: x^2 for values under half a step (they round to
        zero, which int8 represents exactly), step^2 / 12 for the others (uniform rounding)."""
        n = len(self.upper)
        beyond = ((self.c2[n] - self.c2[below]) - 2 * clip * (self.c1[n] - self.c1[below])
                  + clip * clip * (self.c0[n] - self.c0[below]))
        to_zero = np.minimum(np.searchsorted(self.upper, step / 2, side="right"), below)
        return beyond + self.c2[to_zero] + (self.c0[below] - self.c0[to_zero]) * step * step / 12


def mse_range(histogram: np.ndarray, lo: float, hi: float, *, levels: int = 256,
              max_rounds: int = 8) -> tuple[float, float]:
    """The ``(lo, hi)`` with the least summed squared int8 error over the histogram's values,
    clip points searched over the bin edges (1.6% apart) within the observed ``lo..hi``.

    The two ends share one step, ``(hi - lo) / (levels - 1)``, so they are searched in turns
    (each end over all its candidates with the other fixed) until neither moves."""
    pos, neg = _Side(histogram[:_SIDE_KEYS]), _Side(histogram[_SIDE_KEYS:])
    if not len(pos) and not len(neg):
        return lo, hi

    def candidates(side: _Side, observed: float) -> tuple[np.ndarray, np.ndarray]:
        # Clip at 0 (everything of this sign clipped) or at any bin edge up to the observed
        # extreme, over the top CANDIDATE_OCTAVES octaves below it.
        observed = max(observed, 0.0)
        edges = _EDGES[1][(_EDGES[1] > observed * 2.0 ** -CANDIDATE_OCTAVES) & (_EDGES[1] < observed)]
        clip = np.concatenate([[0.0], edges, [observed]]) if len(side) else np.zeros(1)
        return np.searchsorted(side.upper, clip, side="right"), clip

    pos_below, pos_clip = candidates(pos, hi)
    neg_below, neg_clip = candidates(neg, -lo)
    if len(pos):
        pos_below, pos_clip = pos_below[1:], pos_clip[1:]  # a range must reach above zero when values do
    i, k = len(pos_clip) - 1, len(neg_clip) - 1  # start from min/max
    for _ in range(max_rounds):
        step = (pos_clip + neg_clip[k]) / (levels - 1)
        i_new = int(np.argmin(pos.error(pos_below, pos_clip, step) + neg.error(neg_below[k], neg_clip[k], step)))
        step = (pos_clip[i_new] + neg_clip) / (levels - 1)
        k_new = int(np.argmin(pos.error(pos_below[i_new], pos_clip[i_new], step) + neg.error(neg_below, neg_clip, step)))
        if (i_new, k_new) == (i, k):
            break
        i, k = i_new, k_new
    return 0.0 - float(neg_clip[k]), float(pos_clip[i])


def percentile_range(histogram: np.ndarray, lo: float, hi: float, *,
                     percentile: float = PERCENTILE) -> tuple[float, float]:
    """The ``(100 - percentile)``th and ``percentile``th percentiles of the histogram's values
    (zeros included), to the bin edge above, within the observed ``lo..hi``."""
    pos, neg = _Side(histogram[:_SIDE_KEYS]), _Side(histogram[_SIDE_KEYS:])
    total = histogram[: _SIDE_KEYS - (1 << HIST_BITS)].sum() + histogram[_SIDE_KEYS:-(1 << HIST_BITS)].sum()
    allowed = total * (100.0 - percentile) / 100.0  # values each tail may clip

    def edge(side: _Side, observed: float) -> float:
        if not len(side):
            return max(observed, 0.0)
        # The first bin edge with at most `allowed` values beyond it.
        below = np.searchsorted(side.c0, side.c0[-1] - allowed, side="left")
        return min(float(side.upper[max(below - 1, 0)]) if below > 0 else 0.0, max(observed, 0.0))

    return 0.0 - edge(neg, -lo), edge(pos, hi)


def _softmax_inputs(calibrated: bytes, tensors: list[int]) -> list[int]:
    """Positions in ``tensors`` of the tensors that feed a SOFTMAX (the logits)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    softmax = {i for i, code in enumerate(model.operatorCodes)
               if max(code.builtinCode, code.deprecatedBuiltinCode) == _SOFTMAX}
    feeding = {int(op.inputs[0]) for op in graph.operators if op.opcodeIndex in softmax}
    return [j for j, t in enumerate(tensors) if t in feeding]


_SOFTMAX = 25  # BuiltinOperator.SOFTMAX in the TFLite schema


def _ranged_tensors(calibrated: bytes) -> list[int]:
    """Indices of the tensors a calibrated model holds a range for (subgraph 0)."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0]
    return [i for i, t in enumerate(graph.tensors)
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min)]


def _ranges_of(calibrated: bytes, tensors: list[int]) -> tuple[np.ndarray, np.ndarray]:
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.convert_bytearray_to_object(calibrated).subgraphs[0]
    return (np.array([graph.tensors[t].quantization.min[0] for t in tensors], np.float64),
            np.array([graph.tensors[t].quantization.max[0] for t in tensors], np.float64))


def _input_tensor(model_bytes: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    return int(schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0).Inputs(0))


def _input_quantization(model_bytes: bytes) -> tuple[float, int] | None:
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    q = graph.Tensors(graph.Inputs(0)).Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    return float(q.Scale(0)), int(q.ZeroPoint(0))


def _with_ranges(calibrated: bytes, tensors: list[int], lo, hi) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    for t, a, b in zip(tensors, lo, hi):
        graph.tensors[t].quantization.min = [float(a)]
        graph.tensors[t].quantization.max = [float(b)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(calibrated: bytes, *, float_nodes=(), debug: bool = False) -> bytes:
    """int8 model from a calibrated one: uint8 in and out, per-channel weights; ``float_nodes``
    (tensor names) stay float; ``debug`` adds the NumericVerify ops QuantizationDebugger reads."""
    import tempfile

    import tensorflow as tf
    from tensorflow.lite.python import _pywrap_modify_model_interface as mmi
    from tensorflow.lite.python.convert import mlir_quantize

    if debug:
        return mlir_quantize(calibrated, enable_numeric_verify=True)
    if not float_nodes:
        # What TFLiteConverter does for full-integer with uint8 I/O, given these ranges.
        return mlir_quantize(calibrated, False, input_data_type=tf.uint8, output_data_type=tf.uint8)
    blob = mlir_quantize(calibrated, denylisted_nodes=list(float_nodes))
    # Float I/O at this point; give the model the same uint8 interface as full int8. The tool
    # can return success yet leave a float input (when the first layer stays float): the caller
    # checks the interface itself, since edgeres.json promises uint8 pixels.
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d, "in.tflite"), Path(d, "out.tflite")
        src.write_bytes(blob)
        status = mmi.modify_model_interface(str(src), str(dst), TFLITE_UINT8, TFLITE_UINT8)
        return dst.read_bytes() if status == 0 and dst.is_file() else b""


def _io_types(model_bytes: bytes) -> tuple[int, int] | None:
    from ai_edge_litert import schema_py_generated as schema

    if not model_bytes:
        return None
    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return graph.Tensors(graph.Inputs(0)).Type(), graph.Tensors(graph.Outputs(0)).Type()


def _tensor_names(model_bytes: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]


class _quiet:
    """Silence the converter's fd-level chatter (MLIR dumps) unless EDGERES_VERBOSE is set."""

    def __enter__(self):
        if os.environ.get("EDGERES_VERBOSE"):
            self.saved = None
            return self
        self.saved = os.dup(1), os.dup(2)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)
        return self

    def __exit__(self, *exc):
        if self.saved:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            for fd in (*self.saved, self.null):
                os.close(fd)


def float_tensors(model_bytes: bytes) -> list[str]:
    """``op:tensor`` for every float32 tensor an operator reads or writes (empty: all integer)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()]:
                if t >= 0 and graph.Tensors(t).Type() == TFLITE_FLOAT32:
                    found.append(f"{name}:{graph.Tensors(t).Name().decode()}")
    return found


# -- verification ----------------------------------------------------------------------


def verify(bundle: Path, files: dict, dataset: data_lib.Dataset, *, limit: int | None = None,
           threads: int | None = None, progress: bool = False) -> dict:
    """Each exported model through LiteRT on the validation split; int8 against float32."""
    from edgeres.evaluate import compare
    from edgeres.runtime import Classifier

    items = [(s.path, s.label) for s in dataset.validation.samples]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    order = sorted(files, key=lambda f: f != "float32")  # float32 first: the reference
    classifiers = [Classifier(bundle / files[f]["file"], threads=threads, accelerator="cpu") for f in order]
    ev = compare(classifiers, items, tuple(dataset.classes), progress=progress)
    out = {"n": ev.models[0].n, "split": "validation"}
    for fmt, m in zip(order, ev.models):
        out[fmt] = {"accuracy": m.accuracy, "ci95": list(m.ci95), "bytes": files[fmt]["bytes"],
                    "mean_latency_ms": round(m.mean_latency_ms, 3)}
    if "float32" in files and "int8" in files:
        key = str(classifiers[order.index("int8")].path)
        out.update(
            agreement=ev.agreement[key],
            mean_abs_prob_diff=ev.mean_abs_prob_diff[key],
            p99_abs_prob_diff=ev.p99_abs_prob_diff[key],
            accuracy_drop_pp=100 * (out["float32"]["accuracy"] - out["int8"]["accuracy"]),
            size_ratio=files["int8"]["bytes"] / files["float32"]["bytes"],
            disagreements=[d["path"] for d in ev.disagreements[key]][:50],
        )
    return out


# -- per-layer error ---------------------------------------------------------------------


def layer_error_report(model, calibrated: bytes, calibration_set, size: int, out_dir: Path,
                       images: int = 8) -> list[dict]:
    """Per-layer int8 error from TF's QuantizationDebugger, named by Keras layer; CSV + PNG.

    The metric is RMSE / scale: the error in units of one quantization step (0.29 is the
    ideal rounding error of a uniform quantizer), so layers are comparable whatever their range.
    ``clipped_fraction`` is the share of values beyond the range, ``in_range_rmse_over_scale``
    the rounding error of the rest: together they say whether a layer loses to clipping or to
    resolution.
    It uses the exported model's own ranges (``calibrated``); errors are averaged over the
    first ``images`` calibration images. A layer whose rare large values are clipped by the
    robust ranges shows a larger error here, by design.
    """
    import tensorflow as tf

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_direct_compare_metrics={"clipped_fraction": _clipped_fraction,
                                          "in_range_rmse_over_scale": _in_range_rmse_over_scale})
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=quantize(calibrated, debug=True),
            debug_dataset=representative_dataset(calibration_set, size, images), debug_options=options)
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    import keras

    # Layers only: a nested backbone's own name ("resnet50") would otherwise match every tensor.
    layer_names = sorted({layer.name for layer in _all_layers(model) if not isinstance(layer, keras.Model)},
                         key=len, reverse=True)
    rows = []
    import csv

    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"]) or 1.0
        rows.append({
            "layer": _keras_name(row["tensor_name"], layer_names),
            "op": row["op_name"],
            "rmse_over_scale": float(np.sqrt(float(row["mean_squared_error"])) / scale),
            "clipped_fraction": float(row["clipped_fraction"]),
            "in_range_rmse_over_scale": float(row["in_range_rmse_over_scale"]),
            "max_abs_error": float(row["max_abs_error"]),
            "scale": scale,
            "tensor": row["tensor_name"],
        })
    with open(out_dir / "layer_errors.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["layer"])
        w.writeheader()
        w.writerows(rows)
    _plot_layer_errors(rows, out_dir / "layer_errors.png")
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def logits_clipped(layer_rows: list[dict]) -> float | None:
    """Share of the ``logits`` layer's values beyond its int8 range, from the layer report rows."""
    rows = [r for r in layer_rows if r.get("layer") == "logits" and "clipped_fraction" in r]
    return max(r["clipped_fraction"] for r in rows) if rows else None


def _representable(quantized, scale: float, zero_point: int) -> tuple[float, float]:
    info = np.iinfo(quantized.dtype)
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def _clipped_fraction(floats, quantized, scale: float, zero_point: int) -> float:
    """Share of float values outside the int8 range: what the activation range gave up."""
    lo, hi = _representable(quantized, scale, zero_point)
    return float(np.mean((floats < lo - scale / 2) | (floats > hi + scale / 2)))


def _in_range_rmse_over_scale(floats, quantized, scale: float, zero_point: int) -> float:
    """Rounding error alone (values inside the range), in quantization steps; ideal is 0.29."""
    lo, hi = _representable(quantized, scale, zero_point)
    inside = (floats >= lo) & (floats <= hi)
    if not inside.any():
        return 0.0
    error = floats[inside] - (quantized.astype(np.float32)[inside] - zero_point) * scale
    return float(np.sqrt(np.mean(error ** 2)) / scale)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _keras_name(tensor_name: str, layer_names: list[str]) -> str:
    # Tensor names look like "edgeres_resnet50_1/resnet50_1/conv2_block1_1_conv_1/convolution";
    # a fused op lists several (conv;bn;relu) separated by ';': name it after its conv/dense layer.
    matches = []
    for part in tensor_name.split(";"):
        for name in layer_names:
            if f"/{name}/" in part or f"/{name}_1/" in part or part.endswith(f"/{name}"):
                matches.append(name)
                break
    for name in matches:
        if name.endswith("_conv") or name == "logits":
            return name
    return matches[0] if matches else tensor_name.split(";")[-1]


def _plot_layer_errors(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    values = [r["rmse_over_scale"] for r in rows]
    clipped = [100 * r.get("clipped_fraction", 0.0) for r in rows]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.12), 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(range(len(values)), values, color=["tab:red" if v > 0.5 else "tab:blue" for v in values])
    ax.axhline(0.29, color="gray", ls="--", lw=1, label="ideal rounding error (0.29)")
    if max(values, default=0) > 20 * 0.29:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.05)
    worst = sorted(range(len(values)), key=lambda i: -values[i])[:5]
    for i in worst:
        ax.annotate(rows[i]["layer"], (i, values[i]), rotation=60, fontsize=7, ha="left", va="bottom")
    ax.set_ylabel("RMSE / quantization step")
    ax.set_title("int8 error per layer (this model's ranges)")
    ax.legend()
    ax2.bar(range(len(clipped)), clipped, color="tab:orange")
    ax2.set_ylabel("% clipped")
    ax2.set_xlabel("layer (graph order)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
