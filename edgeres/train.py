"""``edgeres train``: fit a ResNet classifier on a folder of photos, checkpointing every epoch.

A run directory describes itself:

    runs/<name>/config.json     every setting, library versions, device, dataset hashes
                labels.txt      class names, one per line, in label order
                dataset.json    class counts and the SHA-256 of each split
                skipped.txt     files that would not decode, with the reason
                model.keras     best-on-validation model (what ``export`` uses)
                last.keras      last complete epoch, with optimizer state (what ``--resume`` uses)
                state.json      epochs done, best score
                history.csv/json, curves.png

The run's files are written by ``run_files`` and, every epoch, ``checkpoint``; the strategy for
several GPUs or workers comes from ``distribute``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeres._stderr import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from edgeres import data as data_lib  # noqa: E402
from edgeres import pipeline  # noqa: E402
from edgeres.checkpoint import Checkpoint, plot_history  # noqa: E402
from edgeres.config import (  # noqa: E402
    Precision,
    StrategyKind,
    TrainConfig,
    to_jsonable,
)
from edgeres.distribute import is_chief, shard_by_data, strategy_for  # noqa: E402
from edgeres.model import (  # noqa: E402
    Weights,
    build_classifier,
    compile_for_training,
    load_model,
    resolve_weights,
    unfreeze_top,
)
from edgeres.run_files import (  # noqa: E402
    Claim,
    OptionError,
    RunExistsError,
    check_out_is_free,
    load_for_resume,
    recorded_weights,
    write_run_files,
)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_val_accuracy: float
    history: list[dict] = field(repr=False)
    device: str = ""
    weights_used: str = "none"  # "imagenet" | "none" | PATH (also in config.json)

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"


def train(config: TrainConfig, *, resume: bool = False, given=(), callbacks=(), verbose: int = 1) -> TrainResult:
    """Train (or resume) the run ``config.out``; returns when every epoch is done.

    ``config.weights="auto"`` (the default) starts from ImageNet weights when Keras's cache has
    them or one download gets them, with the recipe that suits them (``freeze_backbone`` and
    ``fine_tune_epochs`` left at None: backbone frozen for ``epochs``, then its top stage
    fine-tuned for as many); else from scratch, saying why in one line. The run's config.json
    records the choice as ``weights_used``.

    A Ctrl-C or kill loses at most the epoch in progress: rerun with ``resume=True``; the run
    keeps its own settings, and a field named in ``given`` (those the user set) that contradicts
    them is refused (ResumeError). A start
    that fails before its first epoch is saved (bad weights, bad data, Ctrl-C) removes what it
    wrote, so the same command can simply be run again. ``verbose``: 0 silent, 1 Keras's
    progress bar, 2 one line per epoch (for logs and other non-terminals).

    Under ``TF_CONFIG`` (several workers) every worker runs this same call; only the chief
    writes ``config.out``, the others checkpoint into a temporary folder they delete at the end.
    """
    run_dir = Path(config.out)
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything else.
    strategy, device = strategy_for(config.strategy)
    chief, worker = is_chief(strategy)
    state = {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    if resume:
        config, state = load_for_resume(run_dir, config, worker, given)
    elif chief:
        check_out_is_free(run_dir, log=lambda m: _say(verbose, m), data=config.data or os.environ.get("EDGERES_DATA"))
    keras.utils.set_random_seed(config.seed)
    mixed = _use_mixed_precision(config.precision)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    jit = config.jit_compile if config.jit_compile is not None else bool(tf.config.list_physical_devices("GPU"))
    _warn_if_gpu_unused(verbose)
    _say(
        verbose,
        f"Training on {device}, {strategy.num_replicas_in_sync} replica(s); precision "
        f"{'mixed_float16' if mixed else 'float32'}; XLA {'on' if jit else 'off'}"
        + ("." if chief else f"; worker {worker} (not the chief: writes nothing to {run_dir})."),
    )
    if state["epoch"] == 0:  # decided before the data scan: bad weights fail in seconds, not minutes
        config, weights = _choose_weights(config, verbose)
        weights_used = weights.used
        if config.epochs + (config.fine_tune_epochs if config.freeze_backbone else 0) == 0:
            raise OptionError("--epochs 0 (and no --fine-tune-epochs) trains nothing, so there would be no "
                              "model to export. Give --epochs 1 or more.")
    else:
        weights, weights_used = None, recorded_weights(run_dir, config)

    root = data_lib.resolve_data_dir(config.data)
    dataset = data_lib.scan(root, val_fraction=config.val_fraction, seed=config.seed,
                            max_per_class=config.max_per_class, progress=verbose > 0)
    _say(verbose, f"Dataset {root}: classes {', '.join(dataset.classes)}; "
                  f"{len(dataset.train.samples)} train, {len(dataset.validation.samples)} validation, "
                  f"{len(dataset.skipped)} skipped.")
    if len(dataset.train.samples) < config.batch_size:
        raise data_lib.DataError(
            f"Only {len(dataset.train.samples)} training images for --batch-size {config.batch_size}. "
            f"Lower --batch-size or add images under {root}."
        )

    kw = dict(image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
              num_classes=len(dataset.classes), resize=config.resize)
    train_ds = shard_by_data(pipeline.make_dataset(dataset.train, training=True, **kw))
    val_ds = shard_by_data(pipeline.make_dataset(dataset.validation, training=False, **kw))
    steps = len(dataset.train.samples) // config.batch_size
    total_epochs = config.epochs + (config.fine_tune_epochs if config.freeze_backbone else 0)

    # The chief writes the run; other workers save too (saving reads variables collectively),
    # into a temporary folder deleted at the end: TensorFlow's multi-worker recipe.
    work_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix=f"edgeres-worker{worker}-"))
    claim = Claim(work_dir)
    checkpoint = Checkpoint(work_dir, state, verbose)
    cbs = [checkpoint, *callbacks]
    fit_verbose = 1 if verbose == 1 else 0  # 2: Checkpoint prints one line per epoch instead
    try:
        with strategy.scope():
            if state["epoch"] > 0:
                model = load_model(run_dir / "last.keras")
                _say(verbose, f"Resuming {run_dir} after epoch {state['epoch']} of {total_epochs}.")
            else:
                model = build_classifier(config.arch, len(dataset.classes), config.image_size,
                                         weights=weights.source, dropout=config.dropout,
                                         freeze_backbone=config.freeze_backbone)
                _compile(model, config, config.learning_rate, config.epochs * steps, jit)
            # Only now, with data and model in hand, does the run directory get its files.
            work_dir.mkdir(parents=True, exist_ok=True)
            write_run_files(work_dir, config, dataset, root, device, mixed, jit, weights_used)
            if state["epoch"] < config.epochs:
                model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                          initial_epoch=state["epoch"], callbacks=cbs, verbose=fit_verbose, shuffle=False)
            if state["epoch"] < total_epochs:
                if state["epoch"] == config.epochs:  # entering fine-tuning: unfreeze, lower LR
                    unfreeze_top(model, config.fine_tune_stages)
                    _compile(model, config, config.learning_rate / 10, config.fine_tune_epochs * steps, jit)
                model.fit(train_ds, validation_data=val_ds, epochs=total_epochs,
                          initial_epoch=state["epoch"], callbacks=cbs, verbose=fit_verbose, shuffle=False)
    except BaseException as e:
        if state["epoch"] == 0:  # no epoch saved, ever: leave --out as this attempt found it
            claim.undo()
            if chief and isinstance(e, KeyboardInterrupt):
                _say(1, f"\nInterrupted before the first epoch was saved; {run_dir} is as it was. "
                        f"Run the same command again to start over.")
        elif chief and isinstance(e, KeyboardInterrupt):
            _say(1, f"\nInterrupted. {run_dir} holds epoch {state['epoch']} of {total_epochs}; "
                    f"continue with: edgeres train --out {run_dir} --resume")
        raise
    finally:
        if not chief:
            shutil.rmtree(work_dir, ignore_errors=True)
    return TrainResult(run_dir, state["epoch"], state["best_val_accuracy"], state["history"], device,
                       weights_used)


def _choose_weights(config: TrainConfig, verbose: int) -> tuple[TrainConfig, Weights]:
    """Resolve ``config.weights``, fill in the recipe that suits them, and say so in one line."""
    downloading = []

    def on_download(text: str) -> None:  # the line is finished once the download is over
        downloading.append(text)
        _say(verbose, "Weights: " + text, end="")

    weights = resolve_weights(config.arch, config.weights, on_download=on_download)
    config = _with_recipe(config, weights)
    text = f"{weights.note}; {_recipe(config)}." if weights.pretrained else weights.note
    if text or downloading:
        _say(verbose, text if downloading else "Weights: " + text)
    return config, weights


def _with_recipe(config: TrainConfig, weights: Weights) -> TrainConfig:
    """Fill in what the user left open (None) to suit the weights.

    Pretrained weights: backbone frozen for ``epochs`` (the head learns on ImageNet features
    without wrecking them), then its top stage fine-tuned at 1/10 the learning rate for as many
    epochs: keras-io's transfer-learning recipe. From scratch: the whole network from the start.
    """
    freeze = weights.pretrained if config.freeze_backbone is None else config.freeze_backbone
    fine_tune = config.fine_tune_epochs
    if fine_tune is None:
        fine_tune = config.epochs if freeze and weights.pretrained else 0
    return config.replace(freeze_backbone=freeze, fine_tune_epochs=fine_tune)


def _recipe(config: TrainConfig) -> str:
    if not config.freeze_backbone:
        return f"the whole network trained for {_epochs(config.epochs)}"
    text = f"backbone frozen for {_epochs(config.epochs)}"
    if config.fine_tune_epochs:
        stages = ", ".join(f"conv{5 - i}" for i in reversed(range(config.fine_tune_stages)))
        text += f", then {stages} fine-tuned for {_epochs(config.fine_tune_epochs)} at 1/10 the learning rate"
    return text


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _compile(model, config: TrainConfig, lr: float, decay_steps: int, jit: bool) -> None:
    compile_for_training(model, learning_rate=lr, decay_steps=decay_steps, weight_decay=config.weight_decay,
                         label_smoothing=config.label_smoothing, jit_compile=jit)


def _use_mixed_precision(precision: Precision) -> bool:
    if precision is Precision.AUTO:
        return bool(tf.config.list_physical_devices("GPU"))
    return precision is Precision.MIXED


_warned_gpu_unused = False


def _warn_if_gpu_unused(verbose: int) -> None:
    """Once per process: the NVIDIA driver shows a GPU but TensorFlow sees none (the CPU build, say)."""
    global _warned_gpu_unused
    from edgeres.doctor import gpu_unused_by_tensorflow

    message = gpu_unused_by_tensorflow()
    if message and not _warned_gpu_unused:
        _warned_gpu_unused = True
        import sys

        print(f"warning: {message}", file=sys.stderr, flush=True)


def _say(verbose: int, message: str, end: str = "\n") -> None:
    if verbose:
        print(message, end=end, flush=True)


_strategy = strategy_for  # the name benchmarks/bench_train.py imports

__all__ = ["RunExistsError", "TrainConfig", "TrainResult", "train", "plot_history", "to_jsonable"]
