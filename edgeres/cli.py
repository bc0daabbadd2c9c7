"""The ``edgeres`` command line: each command parses, calls one library function, prints.

Heavy imports (TensorFlow, OpenCV) happen inside the commands that need them, so the
runtime commands (predict, evaluate, bench, camera) start in well under a second.
"""

from __future__ import annotations

import contextlib
import glob
import json
import sys
from pathlib import Path
from enum import Enum
from typing import Annotated, Optional

import typer

from edgeres.config import Arch, Precision, StrategyKind
from edgeres.preprocess import Resize

app = typer.Typer(
    help="Folder of labelled photos -> ResNet-50 -> faithful int8 .tflite -> LiteRT on the edge.\n\n"
         "Typical flow: edgeres train --data DIR --out runs/NAME; edgeres export runs/NAME --int8; "
         "edgeres evaluate export/NAME/model_float32.tflite export/NAME/model_int8.tflite --data DIR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors a user can fix: printed as one line, no traceback.
EXIT_USAGE, EXIT_FAILED = 2, 1


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgeres.calibrate import CalibrationError
    from edgeres.data import DataError
    from edgeres.preprocess import ImageError
    from edgeres.runtime import AcceleratorError, ModelError

    errors = [CalibrationError, DataError, ImageError, ModelError, AcceleratorError,
              FileExistsError, FileNotFoundError]
    for module, name in (("edgeres.model", "WeightsError"), ("edgeres.export", "ExportError"),
                         ("edgeres.clients", "ClientError"),
                         ("edgeres.camera", "CameraError")):
        mod = sys.modules.get(module)  # only modules already imported can have raised
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


@contextlib.contextmanager
def _friendly_errors():
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130)
    except ImportError as e:  # an extra that this install does not have
        hint = _MISSING_EXTRA.get((e.name or "").split(".")[0])
        if hint is None and "pip install" not in str(e):
            raise
        typer.secho(f"error: {hint or e}", fg="red", err=True)
        raise typer.Exit(EXIT_USAGE)
    except Exception as e:
        if isinstance(e, _user_errors()):
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(EXIT_USAGE)
        raise


_MISSING_EXTRA = {
    "tensorflow": "this command needs TensorFlow: pip install 'edgeres[train]'",
    "keras": "this command needs TensorFlow/Keras: pip install 'edgeres[train]'",
    "cv2": "edgeres camera needs OpenCV: pip install 'edgeres[camera]'",
    "matplotlib": "plots need matplotlib: pip install 'edgeres[train]' (or matplotlib)",
}

def _multiple_of_32(value):
    if value is not None and value % 32:
        raise typer.BadParameter(f"must be a multiple of 32 (ResNet downsamples by 32). Received: {value}.")
    return value


def _positive(value):
    value = _finite(value)
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be above 0. Received: {value}.")
    return value


def _finite(value):
    """Typer callback: reject NaN and infinities (click's min=/max= let NaN through)."""
    import math

    if value is not None and isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number. Received: {value}.")
    return value


from edgeres.runtime import Accelerator  # noqa: E402 -- light: numpy + the runtime, no LiteRT import yet
from edgeres.export import DEFAULT_RANGES, RANGES, Ranges  # noqa: E402 -- no TensorFlow at import

ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="CPU threads (default: all cores; LiteRT's own default is 1). More than 4 per core is capped, with a note.")]
AcceleratorOpt = Annotated[Accelerator, typer.Option("--accelerator", case_sensitive=False, help="gpu uses LiteRT's GPU accelerator (a bundle runs its float16 model there). Any accelerator is checked against the CPU on probe inputs when it loads; when it is unavailable or disagrees, edgeres says why and runs on CPU.")]
DelegateOpt = Annotated[Optional[Path], typer.Option("--delegate", exists=True, dir_okay=False, help="External delegate library (.so), e.g. a TFLite GPU or Edge TPU delegate; checked against the CPU when it loads.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail instead of falling back to CPU when the accelerator or delegate is unavailable or disagrees with the CPU.")]
class Client(str, Enum):
    MEDIAPIPE = "mediapipe"


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


# -- train -------------------------------------------------------------------------------


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Option(help="Dataset: ROOT/train/<class>/* + ROOT/validation/<class>/*, or ROOT/<class>/*. Default: $EDGERES_DATA, then the cats_and_dogs_filtered download.")] = None,
    out: Annotated[Path, typer.Option(help="Run directory (never overwritten; see --resume).")] = Path("runs/cats-dogs"),
    epochs: Annotated[Optional[int], typer.Option(min=0, help="Epochs (of the frozen phase when --freeze-backbone). Default 10; with --resume, the run's own unless you give more.")] = None,
    image_size: Annotated[int, typer.Option(min=32, max=2048, callback=_multiple_of_32, help="Square input size, a multiple of 32. 224 is ResNet's own; 128 trains ~3x faster on CPU.")] = 224,
    batch_size: Annotated[int, typer.Option(min=1, help="Global batch size (split across GPUs).")] = 32,
    arch: Annotated[Arch, typer.Option(case_sensitive=False, help="resnet50 | resnet50v2 (pre-activation) | resnet-tiny (a small ResNet for smoke tests).")] = Arch.RESNET50,
    weights: Annotated[str, typer.Option(help="auto: ImageNet weights when Keras's cache has them or they download (one try), else from scratch, said in one line | imagenet (fail if not to be had) | none (from scratch) | PATH to a Keras *_notop.h5 file.")] = "auto",
    learning_rate: Annotated[float, typer.Option(max=10.0, callback=_positive, help="Peak AdamW learning rate (cosine decay).")] = 1e-3,
    freeze_backbone: Annotated[Optional[bool], typer.Option("--freeze-backbone/--no-freeze-backbone", help="Train only the head on a frozen backbone for --epochs. Default: frozen with pretrained weights, not from scratch.")] = None,
    fine_tune_epochs: Annotated[Optional[int], typer.Option(min=0, help="After the frozen phase, epochs with the top ResNet stage unfrozen at 1/10 the learning rate. Default: as many as --epochs with pretrained weights, else 0.")] = None,
    max_per_class: Annotated[Optional[int], typer.Option(min=1, help="Use at most N train images per class (validation: N/2): quick runs.")] = None,
    precision: Annotated[Precision, typer.Option(case_sensitive=False, help="auto (mixed_float16 on GPU, float32 on CPU) | mixed | float32.")] = Precision.AUTO,
    xla: Annotated[Optional[bool], typer.Option("--xla/--no-xla", help="XLA jit_compile (default: on with a GPU, off on CPU).")] = None,
    strategy: Annotated[StrategyKind, typer.Option(case_sensitive=False, help="auto | default | mirrored | multi-worker. auto: multi-worker when TF_CONFIG is set, mirrored over >1 GPU.")] = StrategyKind.AUTO,
    seed: Annotated[int, typer.Option(min=0, help="Seed for splits, shuffling, augmentation and init.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue --out from its last complete epoch (after Ctrl-C or a kill).")] = False,
):
    """Train a ResNet-50 (v1 or v2) classifier on a folder of labelled photos.

    Checks every image first (bad files are skipped and listed in RUN/skipped.txt), checkpoints
    every epoch, keeps the best-on-validation model as RUN/model.keras, and plots RUN/curves.png.

    With ImageNet weights (--weights auto finds them in Keras's cache or downloads them) it trains the head on the frozen backbone, then fine-tunes the top stage; without them it trains from scratch. RUN/config.json records which (weights_used).

    Example: edgeres train --data ../shared/data/cats_and_dogs_filtered --out runs/cats-dogs --epochs 3 --image-size 128
    """
    with _friendly_errors():
        from edgeres.config import TrainConfig
        from edgeres.train import train as train_run

        config = TrainConfig(
            data=str(data) if data else None, out=str(out), arch=arch.value, weights=weights, image_size=image_size,
            batch_size=batch_size, epochs=epochs if epochs is not None else (0 if resume else 10),
            learning_rate=learning_rate, seed=seed,
            freeze_backbone=freeze_backbone, fine_tune_epochs=fine_tune_epochs, max_per_class=max_per_class,
            precision=precision, jit_compile=xla, strategy=strategy,
        )
        # Keras's progress bar in a log file is thousands of \r updates: one line per epoch there.
        result = train_run(config, resume=resume, verbose=1 if sys.stdout.isatty() else 2)
        start = {"imagenet": "from ImageNet weights", "none": "from scratch"}.get(
            result.weights_used, f"from {result.weights_used}")
        typer.echo(f"Done: {result.epochs_done} epochs {start}, best validation accuracy "
                   f"{result.best_val_accuracy:.2%}. Model: {result.model_path}")
        typer.echo(f"Next: edgeres export {result.run_dir} --int8")


# -- calibrate / export --------------------------------------------------------------------


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option(help="Manifest to write, e.g. calibration/cats-dogs.txt.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: $EDGERES_DATA).")] = None,
    size: Annotated[int, typer.Option(min=1, help="Images to draw, stratified per class, from the train split.")] = 300,
    seed: Annotated[int, typer.Option(help="Same seed, same manifest.")] = 0,
):
    """Draw a calibration manifest: N train images per class-stratified, seeded, with SHA-256s.

    Use it with: edgeres export RUN --int8 --calibration FILE (hash mismatches are an error).

    Example: edgeres calibrate --data ../shared/data/cats_and_dogs_filtered --size 300 --out calibration/cats-dogs.txt
    """
    with _friendly_errors():
        from edgeres import calibrate as calib
        from edgeres.data import resolve_data_dir, scan

        import warnings

        root = resolve_data_dir(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = calib.draw(scan(root), size, seed=seed)
        for w in caught:
            typer.secho(f"warning: {w.message}", fg="yellow", err=True)
        manifest.save(out)
        typer.echo(f"Wrote {out}: {len(manifest.entries)} images {manifest.class_counts()}, sha256 {manifest.sha256[:16]}")


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory (holds model.keras).", exists=True, file_okay=False)],
    out: Annotated[Optional[Path], typer.Option(help="Bundle directory (default: export/<run name>).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Full-integer int8: uint8 pixels in, uint8 scores out; needs calibration.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 weights (half the size of float32).")] = False,
    float32: Annotated[bool, typer.Option("--float32", help="float32 reference (always written with --int8, to verify against).")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic range: int8 weights, float activations.")] = False,
    data: Annotated[Optional[Path], typer.Option(help="Dataset root for calibration and verification (default: the run's).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Calibration manifest from `edgeres calibrate` (hashes are checked).")] = None,
    calibration_size: Annotated[int, typer.Option(min=1, help="Without --calibration: images to draw (stratified, seeded).")] = 300,
    max_drop: Annotated[float, typer.Option(min=0.0, max=100.0, callback=_finite, help="Fail (exit 1, bundle marked FAILED) if int8 accuracy is more than PP points below float32.")] = 1.0,
    float_layers: Annotated[Optional[str], typer.Option(help="Comma-separated Keras layer names to keep in float (trade speed for accuracy; see layer_errors.csv).")] = None,
    ranges: Annotated[Ranges, typer.Option(help="int8 activation ranges: " + "; ".join(f"{r.value}: {RANGES[r]}" for r in Ranges) + ".", case_sensitive=False)] = DEFAULT_RANGES,
    verify_limit: Annotated[Optional[int], typer.Option(min=1, help="Verify on at most N validation images (default: all).")] = None,
    client_check: Annotated[Optional[bool], typer.Option("--client-check/--no-client-check", help="Also run the int8 model through MediaPipe Tasks' ImageClassifier on the validation photos and record its agreement with edgeres in edgeres.json (default: when a MediaPipe interpreter is found; see evaluate --client).")] = None,
    resize: Annotated[Optional[Resize], typer.Option(help="Resize rule (default: the one the run was trained with). bilinear: the rule MediaPipe and every edgeres client reproduce exactly; antialias: Pillow's antialiased bilinear (edgeres 0.1 runs).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle; only a folder edgeres exported (edgeres.json and the files it writes) is ever replaced.")] = False,
    layer_report: Annotated[bool, typer.Option(help="Per-layer int8 error report (layer_errors.csv/.png).")] = True,
    seed: Annotated[int, typer.Option(help="Seed for drawing the calibration set.")] = 0,
):
    """Export a run to .tflite and verify it: int8 (default), float32, float16, dynamic range.

    The bundle (export/<run>/) holds the models with labels embedded as TFLite metadata,
    edgeres.json (labels, input, quantization, calibration hash, versions, measured accuracy),
    the calibration manifest and a per-layer quantization error report. Verification runs every
    model through LiteRT on the validation split: float vs int8 accuracy, agreement, size.

    Example: edgeres export runs/cats-dogs --int8
    """
    with _friendly_errors():
        import warnings

        from edgeres.export import QuantizationCheckFailed, export

        formats = [f for f, on in (("int8", int8), ("float32", float32), ("float16", fp16), ("dynamic", dynamic)) if on]
        if not formats:
            formats = ["int8"]
        if "int8" in formats and "float32" not in formats:
            formats.append("float32")  # the reference int8 is verified against
        if "int8" in formats and "float16" not in formats:
            formats.append("float16")  # what a GPU runs: LiteRT's GPU path computes int8 wrongly (benchmarks/gpu.md)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                report = export(run_dir, out=out, formats=tuple(formats), data=data, calibration=calibration,
                                calibration_size=calibration_size, max_drop=max_drop, force=force,
                                float_layers=tuple(x.strip() for x in float_layers.split(",")) if float_layers else (),
                                ranges=ranges, verify_limit=verify_limit, resize=resize, client_check=client_check, layer_report=layer_report, seed=seed,
                                log=lambda m: typer.echo(m, err=True))
            except QuantizationCheckFailed as e:
                typer.echo(e.report.summary())
                typer.secho(f"error: {e}", fg="red", err=True)
                raise typer.Exit(EXIT_FAILED)
            finally:
                for w in caught:
                    if "calibration" in str(w.message):
                        typer.secho(f"warning: {w.message}", fg="yellow", err=True)
        typer.echo(report.summary())
        if report.worst_layers:
            worst = ", ".join(f"{r['layer']} ({r['rmse_over_scale']:.2f}, {100 * r.get('clipped_fraction', 0):.2g}% clipped)"
                              for r in report.worst_layers[:3])
            typer.echo(f"  worst int8 layers (RMSE in steps, share of values beyond the range): {worst}; "
                       f"see {report.bundle}/layer_errors.png")


# -- runtime commands ----------------------------------------------------------------------


def _expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    from edgeres.files import image_files

    files, missing = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = image_files(path)
            if not found:
                missing.append(f"{p}: folder has no images (JPEG, PNG, BMP, GIF, WebP, TIFF)")
            files += found
        elif path.is_file():
            files.append(path)
        elif any(c in p for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(p, recursive=True) if Path(f).is_file())
            files += found or []
            if not found:
                missing.append(f"{p}: pattern matches no file")
        else:
            missing.append(f"{p}: no such file or directory")
    return files, missing


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A .tflite file or an export bundle directory (uses its int8 model).")],
    paths: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) or globs.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Show the K best classes.")] = 1,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = None,
    accelerator: AcceleratorOpt = Accelerator.AUTO,
    delegate: DelegateOpt = None,
    strict: StrictOpt = False,
):
    """Classify images with an exported model through LiteRT (no TensorFlow needed).

    Unreadable images are reported and skipped; the exit code is 1 if any failed.

    Example: edgeres predict export/cats-dogs photo.jpg photos/ --top-k 2
    """
    with _friendly_errors():
        from edgeres.preprocess import ImageError
        from edgeres.runtime import Classifier

        clf = Classifier(model, threads=threads, accelerator=accelerator, delegate=delegate, strict=strict)
        files, problems = _expand(paths)
        rows = []
        for f in files:
            try:
                pred = clf.predict(f)
            except ImageError as e:
                problems.append(str(e))
                continue
            rows.append((f, pred))
            if json_out:
                record = {"path": str(f), **pred.to_dict()}
                if top_k > 1:
                    record["top_k"] = [{"label": lbl, "score": round(s, 6)} for lbl, s in pred.top_k(top_k, clf.labels)]
                typer.echo(json.dumps(record))
        if not json_out and rows:
            _print_predictions(rows, clf, top_k)
        for p in problems:
            typer.secho(f"skipped: {p}", fg="yellow", err=True)
        if problems or not rows:
            raise typer.Exit(EXIT_FAILED)


def _print_predictions(rows, clf, top_k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{clf.path.name} on {clf.backend}", title_justify="left")
    table.add_column("image")
    table.add_column("label")
    table.add_column("score", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    table.add_column("ms", justify="right")
    for f, pred in rows:
        cells = [str(f), pred.label, f"{pred.score:.3f}"]
        if top_k > 1:
            cells.append(", ".join(f"{lbl} {s:.2f}" for lbl, s in pred.top_k(top_k, clf.labels)))
        table.add_row(*cells, f"{pred.latency_ms:.1f}")
    Console().print(table)


def _short_names(paths: list[str]) -> list[str]:
    """The shortest path tails that tell the models apart (``cats-dogs/model_int8.tflite``)."""
    parts = [Path(p).parts for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(set(paths)):
            return names
    return list(paths)


@app.command()
def evaluate(
    models: Annotated[list[Path], typer.Argument(help="One or more .tflite files or bundles; the first is the reference for agreement.")],
    data: Annotated[Optional[Path], typer.Option(help="Labelled folder: ROOT/validation/<class>/* (or val/test), or ROOT/<class>/*. Default: $EDGERES_DATA, a local cats_and_dogs_filtered copy, else its download.")] = None,
    split: Annotated[str, typer.Option(help="Split to use when ROOT has splits.")] = "validation",
    limit: Annotated[Optional[int], typer.Option(min=1, help="At most N images, spread over the classes.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write report.json, misclassified.csv, disagreements.csv and confusion PNGs here.")] = None,
    accelerator: Annotated[Accelerator, typer.Option("--accelerator", case_sensitive=False, help="cpu (default: the reference) | gpu | auto. gpu runs a bundle's float16 model on LiteRT's GPU accelerator after a self-check against the CPU.")] = Accelerator.CPU,
    client: Annotated[Optional[Client], typer.Option(help="Also run each model through this client on the same files and report its accuracy and agreement with edgeres. mediapipe: MediaPipe Tasks ImageClassifier, decoding and resizing the files itself as an app does (interpreter: $EDGERES_MEDIAPIPE_PYTHON, else .venv-mediapipe).")] = None,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = None,
):
    """Accuracy (95% CI), per-class precision/recall and confusion of each model; agreement between them.

    All models see byte-identical input pixels, made by each model's own resize rule; --client
    mediapipe also runs each model through MediaPipe Tasks as an app would and reports agreement.

    Example (float vs int8): edgeres evaluate export/cats-dogs/model_float32.tflite export/cats-dogs/model_int8.tflite --data DIR
    """
    with _friendly_errors():
        from edgeres.evaluate import evaluate as run_eval

        from edgeres.data import resolve_data_dir

        data = resolve_data_dir(data, log=lambda m: typer.echo(m, err=True) if not json_out else None)
        ev = run_eval(models, data, split=split, threads=threads, limit=limit, progress=not json_out,
                      accelerator=accelerator)
        checks = []
        if client is Client.MEDIAPIPE:
            from edgeres.clients import check_mediapipe
            from edgeres.evaluate import labelled_images
            from edgeres.runtime import Classifier

            classes, items = labelled_images(data, split)
            if limit:
                items = items[:: max(1, len(items) // limit)][:limit]
            from edgeres.clients import find_mediapipe_python

            if find_mediapipe_python() is None:  # the edgeres numbers still stand: say how, go on
                from edgeres.clients import MEDIAPIPE_HOWTO

                typer.secho(f"warning: --client mediapipe: no MediaPipe interpreter found. {MEDIAPIPE_HOWTO}.",
                            fg="yellow", err=True)
            else:
                checks = [check_mediapipe(Classifier(m, threads=threads, accelerator="cpu"), items, classes)
                          for m in models]
        if report:
            ev.save_report(report)
            if checks:
                (report / "clients.json").write_text(json.dumps([c.to_dict() for c in checks], indent=2) + "\n")
        if json_out:
            typer.echo(json.dumps({**ev.to_dict(), **({"clients": [c.to_dict() for c in checks]} if checks else {})}))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{data} ({split})", title_justify="left")
        names = dict(zip((m.path for m in ev.models), _short_names([m.path for m in ev.models])))
        for col in ("model", "n", "accuracy", "95% CI", *[f"{c} P/R" for c in ev.classes], "ms"):
            # The model column never truncates: float32 and int8 must stay tellable apart.
            table.add_column(col, justify="left" if col == "model" else "right",
                             no_wrap=col != "model", overflow="fold", min_width=len(max(names.values(), key=len)) if col == "model" else None)
        for m in ev.models:
            pr = [f"{m.per_class[c]['precision']:.2f}/{m.per_class[c]['recall']:.2f}" for c in ev.classes]
            table.add_row(names[m.path], str(m.n), f"{m.accuracy:.2%}", f"{m.ci95[0]:.1%}-{m.ci95[1]:.1%}", *pr,
                          f"{m.mean_latency_ms:.1f}")
        Console().print(table)
        for other, agree in ev.agreement.items():
            typer.echo(f"agreement with {names[ev.models[0].path]}: {names.get(other, other)} {agree:.2%} "
                       f"({len(ev.disagreements[other])} disagreements), mean |dp| {ev.mean_abs_prob_diff.get(other, float('nan')):.4f}, "
                       f"p99 |dp| {ev.p99_abs_prob_diff.get(other, float('nan')):.4f}")
        for check in checks:
            typer.echo(f"{_short_names([check.model])[0]}: {check.summary()}")
        if ev.skipped:
            typer.secho(f"skipped {len(ev.skipped)} unreadable image(s)", fg="yellow", err=True)
        if report:
            typer.echo(f"Report: {report}")


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="One or more .tflite files or bundles; ratios are against the first.")],
    threads: ThreadsOpt = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per model.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 10,
    accelerator: AcceleratorOpt = Accelerator.CPU,
    delegate: DelegateOpt = None,
    strict: StrictOpt = False,
    json_out: JsonOpt = False,
):
    """Latency (p50/p90/p99), throughput, load time and memory of each model, batch 1.

    With --accelerator gpu or --delegate, also the accelerator's self-check against the CPU.

    Example (the headline): edgeres bench export/cats-dogs/model_float32.tflite export/cats-dogs/model_int8.tflite --threads 2
    """
    with _friendly_errors():
        from edgeres.bench import bench as run_bench
        from edgeres.bench import ratios

        results = run_bench(models, threads=threads, runs=runs, warmup=warmup, accelerator=accelerator,
                            delegate=delegate, strict=strict)
        speedups = ratios(results)
        if json_out:
            typer.echo(json.dumps({"models": [r.to_dict() for r in results], "speedup_vs_first": speedups}))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"batch 1, {results[0].threads} threads, {runs} runs", title_justify="left")
        for col in ("model", "input", "backend", "load ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "RSS MB", "vs first"):
            table.add_column(col, justify="left" if col in ("model", "input", "backend") else "right")
        for r in results:
            table.add_row(Path(r.path).name, r.input, r.backend, f"{r.load_ms:.0f}", f"{r.p50_ms:.2f}",
                          f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput_ips:.1f}", f"{r.rss_mb:.0f}",
                          f"{speedups.get(r.path, 1.0):.2f}x")
        Console().print(table)
        for r in results:
            if r.self_check:
                typer.echo(f"{Path(r.path).name}: {r.self_check_summary}")


@app.command()
def camera(
    model: Annotated[Path, typer.Argument(help="A .tflite file or an export bundle directory (uses its int8 model).")],
    source: Annotated[str, typer.Option("--source", "-s", help="Camera index (0), /dev/videoN, a video FILE, a stream URL (rtsp://, http://) or a DIR of images.")] = "0",
    no_display: Annotated[bool, typer.Option("--no-display", help="No window (devices without a screen): use --json and/or --record.")] = False,
    record: Annotated[Optional[Path], typer.Option(help="Write the annotated video: .mp4 (mp4v) or .avi (MJPG).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per processed frame on stdout (index, timestamp, label, score, latency).")] = False,
    compare: Annotated[Optional[Path], typer.Option(help="A second model run on the same frames (e.g. float32 beside int8), with the running disagreement rate.")] = None,
    realtime: Annotated[Optional[bool], typer.Option("--realtime/--every-frame", help="Keep only the newest frame (default for cameras and URLs) or process every frame (default for files and folders: reproducible).")] = None,
    smoothing: Annotated[Optional[float], typer.Option(min=0.0, max=0.99, callback=_finite, help="Average probabilities over frames, 0..0.99 (default 0.6 live, 0 for files), so the label does not flicker.")] = None,
    max_frames: Annotated[Optional[int], typer.Option(min=1, help="Stop after N processed frames.")] = None,
    snapshot_dir: Annotated[Path, typer.Option(help="Where the s key saves snapshots.")] = Path("."),
    accelerator: AcceleratorOpt = Accelerator.AUTO,
    threads: ThreadsOpt = None,
):
    """Live cat/dog (or any) classification from a camera, video, stream or folder of images.

    The window shows label, confidence, FPS and latency. Keys: q or Esc quit, space pauses,
    s saves a snapshot. Capture runs on its own thread keeping only the newest frame, so a slow
    model drops frames instead of falling behind. Ends cleanly (recording finalised, summary
    printed) on q, Ctrl-C, the end of a file, or a camera that stays unplugged.

    Example: edgeres camera export/cats-dogs --source 0
    Example (headless): edgeres camera export/cats-dogs --source clip.mp4 --no-display --json --record out.mp4
    """
    with _friendly_errors():
        from edgeres.camera import EndReason, run_camera

        summary = run_camera(
            model, source=source, display=not no_display, record=record,
            json_out=sys.stdout if json_out else None, compare=compare, accelerator=accelerator,
            threads=threads, realtime=realtime, smoothing=smoothing, max_frames=max_frames,
            snapshot_dir=snapshot_dir,
        )
        typer.echo(summary.format(), err=True)
        if summary.ended is EndReason.INTERRUPTED:
            raise typer.Exit(130)


# -- doctor --------------------------------------------------------------------------------


@app.command()
def doctor(
    json_out: JsonOpt = False,
    need: Annotated[Optional[list[str]], typer.Option("--need", help="What your next command needs: train | gpu | camera | mediapipe (repeatable). Missing, it is a problem (exit 1); otherwise a note.")] = None,
    cameras: Annotated[int, typer.Option(min=0, max=16, help="Try camera indices 0..N-1 (each in its own process, a few seconds' timeout).")] = 4,
    model: Annotated[Optional[Path], typer.Option("--model", exists=True, help="Also load this .tflite or bundle on the accelerator (--accelerator, default gpu) and report its self-check against the CPU: the gap, and whether the accelerator is used.")] = None,
    accelerator: AcceleratorOpt = Accelerator.GPU,
    delegate: DelegateOpt = None,
):
    """What this machine can do: Python and packages, TensorFlow's devices (and whether training
    uses mixed precision and XLA), LiteRT's CPU and GPU accelerators, OpenCV's video and GUI
    backends, cameras, a MediaPipe interpreter, disk space.

    Exits 1 when something the next command needs is broken, with the fix on the same line.

    Example: edgeres doctor --need train --need gpu
    """
    from edgeres.doctor import NEEDS, diagnose, format_report

    wanted = [n.strip() for item in (need or []) for n in item.split(",") if n.strip()]
    bad = [n for n in wanted if n not in NEEDS]
    if bad:
        raise typer.BadParameter(f"{', '.join(bad)}: choose from {', '.join(NEEDS)}.", param_hint="--need")
    report = diagnose(need=wanted, cameras=range(cameras))
    if model is not None:
        with _friendly_errors():
            from edgeres.runtime import check_accelerator

            report["model_check"] = check_accelerator(model, accelerator=accelerator, delegate=delegate)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(format_report(report))
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="An export bundle directory (edgeres export RUN --int8 --out DIR).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on: 127.0.0.1 for this machine, 0.0.0.0 for a phone on the same network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0 picks a free one).")] = 8000,
    https: Annotated[bool, typer.Option("--https", help="Serve https with a self-signed certificate made now (phones allow the camera only on https).")] = False,
):
    """The bundle's model live in a browser: camera, photos, int8 and float32 side by side.

    The page runs the .tflite files in the browser (LiteRT.js, WebAssembly) on the pixels edgeres defines, and shows label, score, FPS and latency over the video, with the bundle's labels and verification numbers. Everything is served from this machine (works offline); only the page, its JS/WASM files and the bundle's own files are served. Ctrl+C stops.

    The JS/WASM files come from `npm ci` in the edgeres checkout (once). A phone needs --host 0.0.0.0 --https (browsers allow the camera only on https or localhost): scan the QR code printed here and accept the self-signed certificate once.

    Example: edgeres serve export/cats-dogs
    Example (phone on the same Wi-Fi): edgeres serve export/cats-dogs --host 0.0.0.0 --https
    """
    with _friendly_errors():
        from edgeres.serve import ServeError, serve as serve_bundle

        try:
            serve_bundle(bundle, host=host, port=port, https=https, log=typer.echo)
        except ServeError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(EXIT_USAGE)


def _reflow(doc: str) -> str:
    """A docstring as --help text: each paragraph one line (Rich wraps it to the terminal), each
    ``Example:`` line a paragraph of its own. Hard line breaks would split sentences mid-way."""
    import inspect

    paragraphs = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        current: list[str] = []
        for line in block.splitlines():
            if line.lstrip().startswith("Example") and current:
                paragraphs.append(" ".join(current))
                current = []
            current.append(line.strip())
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


for _command in app.registered_commands:
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _reflow(_command.callback.__doc__)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
