"""The commands on TensorFlow's side: train, calibrate, export. TensorFlow is imported inside
each command, so ``edgeres --help`` and the device commands never load it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeres.cli.common import EXIT_FAILED, _finite, _friendly_errors, _multiple_of_32, _positive, app
from edgeres.config import Arch, Precision, StrategyKind
from edgeres.export import DEFAULT_RANGES, RANGES, Ranges  # noqa: E402 -- no TensorFlow at import
from edgeres.preprocess import Resize


# -- train -------------------------------------------------------------------------------


@app.command()
def train(
    ctx: typer.Context,
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
    resume: Annotated[bool, typer.Option(help="Continue --out from its last complete epoch (after Ctrl-C or a kill), with the run's own settings: options not given are the run's; one that contradicts the run is refused (more --epochs is allowed).")] = False,
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
        result = train_run(config, resume=resume, given=_given_fields(ctx), verbose=1 if sys.stdout.isatty() else 2)
        start = {"imagenet": "from ImageNet weights", "none": "from scratch"}.get(
            result.weights_used, f"from {result.weights_used}")
        typer.echo(f"Done: {result.epochs_done} epochs {start}, best validation accuracy "
                   f"{result.best_val_accuracy:.2%}. Model: {result.model_path}")
        typer.echo(f"Next: edgeres export {result.run_dir} --int8")


def _given_fields(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields set on the command line (``--resume`` refuses those that contradict the run)."""
    given = {name for name in ctx.params
             if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    return {{"xla": "jit_compile"}.get(name, name) for name in given}


# -- calibrate / export --------------------------------------------------------------------


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option(help="Manifest to write, e.g. calibration/cats-dogs.txt.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: $EDGERES_DATA).")] = None,
    size: Annotated[int, typer.Option(min=1, help="Images to draw, stratified per class, from the train split.")] = 300,
    seed: Annotated[int, typer.Option(help="Same seed, same manifest.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing manifest; only a file edgeres calibrate wrote is ever replaced.")] = False,
):
    """Draw a calibration manifest: N train images per class-stratified, seeded, with SHA-256s.

    Use it with: edgeres export RUN --int8 --calibration FILE (hash mismatches are an error).

    Example: edgeres calibrate --data ../shared/data/cats_and_dogs_filtered --size 300 --out calibration/cats-dogs.txt
    """
    with _friendly_errors():
        from edgeres import calibrate as calib
        from edgeres.data import resolve_data_dir, scan
        from edgeres.outputs import Kind, check_output

        import warnings

        check_output(out, Kind.MANIFEST, force=force, instead="calibration/NAME.txt")
        root = resolve_data_dir(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = calib.draw(scan(root), size, seed=seed)
        for w in caught:
            typer.secho(f"warning: {w.message}", fg="yellow", err=True)
        manifest.save(out, force=force)
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
    uncertain_below: Annotated[Optional[str], typer.Option(metavar="T|off", help="Call an answer uncertain when its top score is below T (above 1/classes, below 1) instead of the band measured at export across float32, float16 and int8 on XNNPACK and the built-in kernels; 'off': no band. Written into each .tflite, where MediaPipe's ImageClassifier drops uncertain answers by default.")] = None,
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
                                float_layers=tuple(x.strip() for x in float_layers.split(",") if x.strip()) if float_layers else (),
                                ranges=ranges, verify_limit=verify_limit, resize=resize, client_check=client_check, layer_report=layer_report, seed=seed,
                                uncertain_below=uncertain_below, log=lambda m: typer.echo(m, err=True))
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



# -- qat -----------------------------------------------------------------------------------


@app.command("qat")
def qat_cmd(
    run: Annotated[Path, typer.Argument(help="The trained run to fine-tune (holds model.keras); unused with --resume.", file_okay=False)],
    out: Annotated[Path, typer.Option(help="The new run directory (never overwritten; see --resume).")],
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs of fine-tuning. Default 1 (benchmarks/qat.md); with --resume, the run's own unless you give more.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: the run's own).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(max=1.0, callback=_positive, help="Peak learning rate (cosine decay). Default 2e-6: larger ones move the model away from RUN (benchmarks/qat.md).")] = None,
    labels: Annotated[bool, typer.Option("--labels", help="Train on the dataset's labels instead of distilling RUN's own scores (the default).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue --out from its last complete epoch (after Ctrl-C or a kill).")] = False,
):
    """Quantization-aware fine-tuning: RUN with int8 fake quantization, into a new run --out.

    The new run computes what its int8 export will: BatchNorm folded, int8 weights (per channel) and int8 activations at every tensor the int8 model stores, ranges from edgeres's calibration rule, then tracked. It learns RUN's own scores on the training photos (--labels: the labels instead). Export it as any run: its int8 model is verified against its own forward pass and against RUN.

    Use it when the int8 model's scores must follow the trained model closely; it costs one epoch of training (17 minutes for ResNet-50 at 160 px on a busy 2-core CPU, benchmarks/qat.md) and a training install. See README, "Quantization-aware fine-tuning".

    Example: edgeres qat runs/cats-dogs --out runs/cats-dogs-qat && edgeres export runs/cats-dogs-qat --int8
    """
    with _friendly_errors():
        from edgeres.qat import qat

        result = qat(run, out, epochs=epochs, data=data, learning_rate=learning_rate, labels=labels, resume=resume,
                     verbose=1 if sys.stdout.isatty() else 2)
        typer.echo(f"Done: {result.epochs_done} epoch(s) of QAT, best validation accuracy "
                   f"{result.best_val_accuracy:.2%}. Model: {result.model_path}")
        typer.echo(f"Next: edgeres export {result.run_dir} --int8")
