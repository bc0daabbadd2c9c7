"""``edgeres qat``: quantization-aware fine-tuning, so the int8 model that ships is the one trained.

A trained run RUN is rebuilt as its fake-quantized twin (:mod:`edgeres.qat_model`), its
activation ranges set by edgeres's calibration rule on RUN's float model, then fine-tuned with
fake quantization on. By default it learns RUN's own outputs on the training photos
(distillation), which keeps it close to RUN; ``labels=True`` trains on the labels instead.
The result NEW is an ordinary run directory (same files, checkpoints every epoch, ``resume``),
with RUN's labels and resize rule; ``config.json`` records ``"qat"`` and the parent run, and
``edgeres export NEW --int8`` converts its fake quantization as it is (:mod:`edgeres.export.qat_convert`).

Measured on the reference model (benchmarks/qat.md): distilling at 2e-6 for one epoch, int8
follows the QAT forward at mean |dp| 0.0037 and agrees with RUN on 99.2%; on the labels the model
moved away from RUN (98.1%), and distilling at 1e-5 drifted back to post-training's distance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgeres._stderr import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from edgeres import calibrate as calib  # noqa: E402
from edgeres import data as data_lib  # noqa: E402
from edgeres import pipeline  # noqa: E402
from edgeres.checkpoint import Checkpoint  # noqa: E402
from edgeres.config import Precision, StrategyKind, TrainConfig, from_dict, run_resize, to_jsonable  # noqa: E402
from edgeres.distribute import strategy_for  # noqa: E402
from edgeres.export.ranges import DEFAULT_RANGES, Ranges, StatsCollector, choose_ranges  # noqa: E402
from edgeres.model import compile_for_training, load_model  # noqa: E402
from edgeres.preprocess import load_pixels  # noqa: E402
from edgeres.qat_model import RANGE_DECAY, fake_quant, fake_quant_points, qat_classifier  # noqa: E402
from edgeres.run_files import Claim, check_out_is_free, load_for_resume, write_run_files  # noqa: E402


class Target(str, Enum):
    DISTILL = "distill"  # the parent run's own scores on the same (augmented) photos
    LABELS = "labels"  # the dataset's labels, as edgeres train


DEFAULT_EPOCHS = 1  # benchmarks/qat.md
DEFAULT_LEARNING_RATE = 2e-6  # benchmarks/qat.md


@dataclass(frozen=True)
class QATConfig:
    """What ``config.json["qat"]`` records (the rest of the run's settings are under ``"train"``)."""

    parent: str  # the run fine-tuned (its model.keras is the teacher and the start)
    target: Target = Target.DISTILL
    calibration_size: int = calib.RECOMMENDED_SIZE  # images the initial ranges are measured on
    ranges: Ranges = DEFAULT_RANGES  # the rule they are chosen by (as edgeres export's --ranges)
    range_decay: float = RANGE_DECAY  # then each range follows this moving average of batch min/max


@dataclass(frozen=True)
class QATResult:
    run_dir: Path
    epochs_done: int
    best_val_accuracy: float
    history: list[dict] = field(repr=False)

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"


def qat(run: str | Path, out: str | Path, *, epochs: int | None = None, data: str | Path | None = None,
        learning_rate: float | None = None, labels: bool = False, resume: bool = False,
        batch_size: int | None = None, calibration_size: int = calib.RECOMMENDED_SIZE,
        max_per_class: int | None = None, callbacks=(), verbose: int = 1) -> QATResult:
    """Fine-tune the trained run ``run`` with int8 fake quantization into the new run ``out``.

    Defaults (benchmarks/qat.md): ``epochs=1``, ``learning_rate=2e-6``, distillation from
    ``run``'s outputs (``labels=True``: the dataset's labels). ``data``: the run's dataset unless
    given; ``batch_size`` and ``max_per_class``: the run's unless given. A Ctrl-C loses at most the epoch in progress: call again with ``resume=True``.
    ``verbose``: 0 silent, 1 Keras's progress bar, 2 one line per epoch.
    """
    out = Path(out)
    say = (lambda m: print(m, flush=True)) if verbose else (lambda m: None)
    state = {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    if resume:
        config, state = load_for_resume(out, TrainConfig(epochs=epochs or 0))
        qat_config = _qat_config(json.loads((out / "config.json").read_text()).get("qat"), out)
        parent = Path(qat_config.parent)
    else:
        parent = Path(run)
        parent_run = _load_parent(parent)
        check_out_is_free(out, log=say)
        qat_config = QATConfig(str(parent.resolve()), Target.LABELS if labels else Target.DISTILL,
                               calibration_size)
        root = data_lib.resolve_run_data(parent_run, parent, data, log=say)
        train = dict(parent_run["train"], precision=Precision.FLOAT32.value, strategy=StrategyKind.DEFAULT.value)
        config = from_dict(TrainConfig, train).replace(
            data=str(root), out=str(out), weights="none", freeze_backbone=False, fine_tune_epochs=0,
            epochs=epochs if epochs is not None else DEFAULT_EPOCHS, jit_compile=False,
            learning_rate=learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATE,
            label_smoothing=0.0 if qat_config.target is Target.DISTILL else parent_run["train"].get("label_smoothing", 0.1),
            batch_size=batch_size or parent_run["train"].get("batch_size", 32),
            max_per_class=max_per_class if max_per_class is not None else parent_run["train"].get("max_per_class"),
            resize=run_resize(parent_run["train"]))
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy("float32")  # fake quantization is float32 arithmetic

    root = data_lib.resolve_data_dir(config.data)
    dataset = data_lib.scan(root, val_fraction=config.val_fraction, seed=config.seed,
                            max_per_class=config.max_per_class, progress=verbose > 0)
    teacher = load_model(parent / "model.keras") if (qat_config.target is Target.DISTILL or state["epoch"] == 0) else None
    labels_of_parent = _labels(parent)
    if tuple(dataset.classes) != tuple(labels_of_parent):
        raise data_lib.DataError(f"The dataset at {root} has classes {dataset.classes}; {parent} was trained on "
                                 f"{labels_of_parent}. Pass --data with the run's classes.")
    if len(dataset.train.samples) < config.batch_size:
        raise data_lib.DataError(f"Only {len(dataset.train.samples)} training images for batch size "
                                 f"{config.batch_size} under {root}. Add images or lower the batch size.")
    say(f"QAT of {parent} ({config.arch}, {config.image_size} px): {qat_config.target.value}, "
        f"learning rate {config.learning_rate:g}, {config.epochs} epoch(s); dataset {root}: "
        f"{len(dataset.train.samples)} train, {len(dataset.validation.samples)} validation.")

    kw = dict(image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
              num_classes=len(dataset.classes), resize=config.resize)
    train_ds = pipeline.make_dataset(dataset.train, training=True, **kw)
    if qat_config.target is Target.DISTILL:
        # The teacher scores each augmented batch as the student sees it.
        train_ds = train_ds.map(lambda x, y: (x, teacher(x, training=False)))
    val_ds = pipeline.make_dataset(dataset.validation, training=False, **kw)
    steps = len(dataset.train.samples) // config.batch_size

    claim = Claim(out)
    checkpoint = Checkpoint(out, state, verbose)
    try:
        if state["epoch"] > 0:
            model = load_model(out / "last.keras")
            say(f"Resuming {out} after epoch {state['epoch']} of {config.epochs}.")
        else:
            model = qat_classifier(teacher, config.arch)
            calibration = calib.draw(dataset, qat_config.calibration_size, seed=config.seed)
            images = [load_pixels(p, config.image_size, config.resize) for p in calibration.paths]
            set_initial_ranges(model, images, qat_config.ranges)
            say(f"Ranges: {len(fake_quant_points(model))} activation ranges from {len(images)} calibration images "
                f"({qat_config.ranges.value}), then tracked (moving average, decay {qat_config.range_decay}).")
            compile_for_training(model, learning_rate=config.learning_rate, decay_steps=config.epochs * steps,
                                 weight_decay=0.0, label_smoothing=config.label_smoothing, jit_compile=False)
        out.mkdir(parents=True, exist_ok=True)
        write_run_files(out, config, dataset, root, strategy_for(StrategyKind.DEFAULT)[1], False, False, "none",
                        extra={"qat": qat_config, "parent": qat_config.parent})
        if state["epoch"] < config.epochs:
            model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, initial_epoch=state["epoch"],
                      callbacks=[checkpoint, *callbacks], verbose=1 if verbose == 1 else 0, shuffle=False)
    except BaseException as e:
        if state["epoch"] == 0:
            claim.undo()
            if isinstance(e, KeyboardInterrupt):
                say(f"\nInterrupted before the first epoch was saved; {out} is as it was.")
        elif isinstance(e, KeyboardInterrupt):
            say(f"\nInterrupted. {out} holds epoch {state['epoch']} of {config.epochs}; continue with: "
                f"edgeres qat {parent} --out {out} --resume")
        raise
    return QATResult(out, state["epoch"], state["best_val_accuracy"], state["history"])


def set_initial_ranges(model: keras.Model, images: list[np.ndarray], rule: Ranges | str = DEFAULT_RANGES,
                       batch: int = 8) -> None:
    """Set each tracked fake quant's range by ``rule`` from the float model's values on ``images``
    (uint8 ``[S, S, 3]``): the ranges ``edgeres export`` would give the parent run, per tensor."""
    points = [p for p in fake_quant_points(model) if p.fixed is None]
    probe = keras.Model(model.input, [p.input for p in points])
    collector = StatsCollector(len(points))
    with fake_quant(model, enabled=False):
        for start in range(0, len(images), batch):
            values = probe(np.stack(images[start:start + batch]).astype(np.float32), training=False)
            values = [np.asarray(v) for v in values]
            for i in range(len(values[0])):
                collector.add([v[i] for v in values])
    stats = collector.stats()
    logits = [j for j, p in enumerate(points) if p.name == "logits_fq"]
    low, high = choose_ranges(rule, stats, output_side=logits)
    for p, a, b in zip(points, low, high):
        p.range_min.assign(min(float(a), 0.0))
        p.range_max.assign(max(float(b), 0.0))


def qat_record(run_dir: str | Path) -> dict | None:
    """``config.json["qat"]`` of a run (None: not a QAT run)."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()).get("qat") if path.is_file() else None


def _qat_config(saved: dict | None, out: Path) -> QATConfig:
    if not saved:
        raise FileNotFoundError(f"{out}/config.json has no \"qat\" record: it is not a QAT run. "
                                f"Resume it with edgeres train --out {out} --resume.")
    return QATConfig(saved["parent"], Target(saved["target"]), saved["calibration_size"], Ranges(saved["ranges"]),
                     saved["range_decay"])


def _load_parent(run: Path) -> dict:
    config = run / "config.json"
    if not (run / "model.keras").is_file() or not config.is_file():
        raise FileNotFoundError(f"{run} is not a finished edgeres run (needs model.keras and config.json). "
                                f"Train one with: edgeres train --out {run}")
    return json.loads(config.read_text())


def _labels(run: Path) -> list[str]:
    return [line for line in (run / "labels.txt").read_text().splitlines() if line]


__all__ = ["QATConfig", "QATResult", "Target", "qat", "set_initial_ranges", "to_jsonable"]
