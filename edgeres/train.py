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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeres._stderr import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from edgeres import data as data_lib  # noqa: E402
from edgeres import pipeline  # noqa: E402
from edgeres.config import (  # noqa: E402
    Precision,
    StrategyKind,
    TrainConfig,
    from_dict,
    to_jsonable,
    versions,
    write_bytes_atomic,
    write_json_atomic,
)
from edgeres.model import (  # noqa: E402
    Weights,
    build_classifier,
    compile_for_training,
    load_model,
    resolve_weights,
    unfreeze_top,
)


class RunExistsError(FileExistsError):
    pass


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


def train(config: TrainConfig, *, resume: bool = False, callbacks=(), verbose: int = 1) -> TrainResult:
    """Train (or resume) the run ``config.out``; returns when every epoch is done.

    ``config.weights="auto"`` (the default) starts from ImageNet weights when Keras's cache has
    them or one download gets them, with the recipe that suits them (``freeze_backbone`` and
    ``fine_tune_epochs`` left at None: backbone frozen for ``epochs``, then its top stage
    fine-tuned for as many); else from scratch, saying why in one line. The run's config.json
    records the choice as ``weights_used``.

    A Ctrl-C or kill loses at most the epoch in progress: rerun with ``resume=True``. A start
    that fails before its first epoch is saved (bad weights, bad data, Ctrl-C) removes what it
    wrote, so the same command can simply be run again. ``verbose``: 0 silent, 1 Keras's
    progress bar, 2 one line per epoch (for logs and other non-terminals).

    Under ``TF_CONFIG`` (several workers) every worker runs this same call; only the chief
    writes ``config.out``, the others checkpoint into a temporary folder they delete at the end.
    """
    run_dir = Path(config.out)
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything else.
    strategy, device = _strategy(config.strategy)
    chief, worker = _is_chief(strategy)
    state = {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    if resume:
        config, state = _load_for_resume(run_dir, config, worker)
    elif chief:
        _check_out_is_free(run_dir, verbose)
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
    else:
        weights, weights_used = None, _recorded_weights(run_dir, config)

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
    train_ds = _shard_by_data(pipeline.make_dataset(dataset.train, training=True, **kw))
    val_ds = _shard_by_data(pipeline.make_dataset(dataset.validation, training=False, **kw))
    steps = len(dataset.train.samples) // config.batch_size
    total_epochs = config.epochs + (config.fine_tune_epochs if config.freeze_backbone else 0)

    # The chief writes the run; other workers save too (saving reads variables collectively),
    # into a temporary folder deleted at the end: TensorFlow's multi-worker recipe.
    work_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix=f"edgeres-worker{worker}-"))
    claim = _Claim(work_dir)
    checkpoint = _Checkpoint(work_dir, state, verbose)
    cbs = [checkpoint, *callbacks]
    fit_verbose = 1 if verbose == 1 else 0  # 2: _Checkpoint prints one line per epoch instead
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
            _write_run_files(work_dir, config, dataset, root, device, mixed, jit, weights_used)
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


def _recorded_weights(run_dir: Path, config: TrainConfig) -> str:
    """What a resumed run started from (runs from before ``weights_used``: their ``weights``)."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved.get("weights_used", config.weights)


# What a start writes before its first epoch is saved; a folder holding only these (and no
# state.json) is a start that died (kill -9, power cut) and may be started over.
START_FILES = frozenset({"config.json", "labels.txt", "dataset.json", "skipped.txt"})


def _check_out_is_free(run_dir: Path, verbose: int) -> None:
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunExistsError(f"--out {run_dir} is a file, not a run directory. Choose another --out.")
    names = {p.name for p in run_dir.iterdir() if not _is_temp_name(p.name)}
    if not names:
        return
    if names <= START_FILES:
        _say(verbose, f"{run_dir} holds only the files of a start that never finished an epoch; starting over.")
        return
    raise RunExistsError(
        f"Run directory {run_dir} already exists. Continue it with --resume, or choose another --out."
    )


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and ".tmp" in name


class _Claim:
    """Remembers what a folder held before this attempt, so a failed start can put it back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.existed = folder.exists()
        self.before = {p.name for p in folder.iterdir()} if self.existed else set()

    def undo(self) -> None:
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in self.before:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if not self.existed:
            with contextlib.suppress(OSError):  # only if now empty
                self.folder.rmdir()


def _compile(model, config: TrainConfig, lr: float, decay_steps: int, jit: bool) -> None:
    compile_for_training(model, learning_rate=lr, decay_steps=decay_steps, weight_decay=config.weight_decay,
                         label_smoothing=config.label_smoothing, jit_compile=jit)


def _load_for_resume(run_dir: Path, overrides: TrainConfig, worker: int = 0) -> tuple[TrainConfig, dict]:
    config_path, state_path = run_dir / "config.json", run_dir / "state.json"
    if not config_path.is_file():
        if worker:
            raise FileNotFoundError(
                f"Worker {worker} cannot read {config_path}: every worker resumes from the chief's run "
                f"directory. Put it on a shared filesystem, or copy it to the same path on every worker."
            )
        raise FileNotFoundError(f"Nothing to resume in {run_dir}: no config.json. Start it without --resume.")
    saved = from_dict(TrainConfig, json.loads(config_path.read_text())["train"])
    # Only the length of the run may change on resume (to more epochs); the rest is the run's own.
    config = saved.replace(epochs=max(saved.epochs, overrides.epochs), out=str(run_dir))
    if not state_path.is_file():  # interrupted before the first epoch ended: start over
        return config, {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    return config, json.loads(state_path.read_text())


def _strategy(kind: StrategyKind):
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
    if kind is StrategyKind.AUTO:
        kind = (StrategyKind.MULTI_WORKER if os.environ.get("TF_CONFIG")
                else StrategyKind.MIRRORED if len(gpus) > 1 else StrategyKind.DEFAULT)
    if kind is StrategyKind.MULTI_WORKER:
        return _MultiWorkerStrategy(), device + " per worker (TF_CONFIG)"
    if kind is StrategyKind.MIRRORED:
        if gpus:
            return tf.distribute.MirroredStrategy(), device
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus), f"{len(cpus)} logical CPU device(s)"
    return tf.distribute.get_strategy(), device


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` takes a nest of values, as MirroredStrategy's does.

    Two Keras 3.15 / TF 2.21 mismatches, both fatal before the first step on every worker:
    ``fit``/``evaluate`` reduce the first ``(x, y)`` batch across replicas to build the model,
    and the collective ``_reduce_to`` takes a single value, not a tuple ("Attempt to convert a
    value (PerReplica:{...}) with an unsupported type ... to a Tensor"); then each step reduces
    its scalar logs with ``axis=0`` ("Invalid reduction dimension 0 for input with 0
    dimensions", tensorflow/tensorflow#72388). A scalar is reduced across replicas only.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(v):
            first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            rank = getattr(getattr(first, "shape", None), "rank", None)
            return parent.reduce(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def _is_chief(strategy) -> tuple[bool, int]:
    """``(is_chief, worker index)``: the chief is task ``chief``, else worker 0 (TF's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_id = int(resolver.task_id or 0)
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and task_id == 0), task_id


def _shard_by_data(ds):
    """Split batches between workers by element (AutoShardPolicy.DATA), set here on purpose.

    The pipeline starts from a list of file names (``from_tensor_slices``), not from files
    TensorFlow could give each worker, so the default (FILE, falling back to DATA) would only
    warn. With DATA every worker decodes the whole (cached) split and keeps its share of each
    global batch; the shuffle and augmentation seeds are the run's, the same on every worker, so
    the shares never overlap. Without several workers the option changes nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


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


def _write_run_files(run_dir, config, dataset, root, device, mixed, jit, weights_used) -> None:
    write_bytes_atomic(run_dir / "labels.txt", "".join(c + "\n" for c in dataset.classes).encode())
    data_lib.write_skipped(dataset, run_dir / "skipped.txt")
    counts = {s.name: dict(zip(dataset.classes, np.bincount(s.labels, minlength=len(dataset.classes)).tolist()))
              for s in (dataset.train, dataset.validation)}
    write_json_atomic(run_dir / "dataset.json", {
        "root": str(Path(root).resolve()), "layout": dataset.layout, "classes": dataset.classes,
        "counts": counts, "sha256": {"train": dataset.train.digest, "validation": dataset.validation.digest},
        "skipped": len(dataset.skipped),
    })
    write_json_atomic(run_dir / "config.json", {
        "train": config, "weights_used": weights_used, "labels": dataset.classes,
        "data_root": str(Path(root).resolve()),
        "dataset_sha256": {"train": dataset.train.digest, "validation": dataset.validation.digest},
        "device": device, "mixed_precision": mixed, "jit_compile": jit, "versions": versions(),
    })


class _Checkpoint(keras.callbacks.Callback):
    """Saves last.keras + state.json every epoch (atomically), model.keras when validation improves."""

    def __init__(self, run_dir: Path, state: dict, verbose: int):
        super().__init__()
        self.run_dir, self.state, self.verbose = run_dir, state, verbose
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row = {"epoch": epoch + 1, **logs, "seconds": round(time.time() - self._t0, 2)}
        history = [h for h in self.state["history"] if h["epoch"] <= epoch] + [row]
        val_acc = logs.get("val_accuracy", -1.0)
        improved = val_acc > self.state["best_val_accuracy"]
        if improved:
            _save_model(self.model, self.run_dir / "model.keras")
        _save_model(self.model, self.run_dir / "last.keras")
        self.state.update(epoch=epoch + 1, history=history,
                          best_val_accuracy=max(val_acc, self.state["best_val_accuracy"]))
        write_json_atomic(self.run_dir / "state.json", self.state)
        write_json_atomic(self.run_dir / "history.json", history)
        _write_history_csv(self.run_dir / "history.csv", history)
        plot_history(history, self.run_dir / "curves.png")
        if self.verbose >= 2:
            total = self.params.get("epochs", epoch + 1) if self.params else epoch + 1
            print(_epoch_line(row, total) + (" (best so far, saved)" if improved else ""), flush=True)


def _epoch_line(row: dict, total: int) -> str:
    """``epoch 2/10: loss 0.6512, accuracy 61.3%, val_loss 0.6234, val_accuracy 64.0% (41.2 s)``"""
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row:
            parts.append(f"{key} {100 * row[key]:.1f}%" if key.endswith("accuracy") else f"{key} {row[key]:.4f}")
    return f"epoch {row['epoch']}/{total}: {', '.join(parts)} ({row['seconds']:.1f} s)"


def _save_model(model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def _write_history_csv(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in history]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [h.get(prefix + metric) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=(prefix or "train_") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _say(verbose: int, message: str, end: str = "\n") -> None:
    if verbose:
        print(message, end=end, flush=True)


__all__ = ["TrainConfig", "TrainResult", "train", "plot_history", "to_jsonable"]
