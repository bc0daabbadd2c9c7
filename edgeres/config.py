"""Small frozen configs, one per stage, serialised next to every artifact they produce.

CLI flags map one-to-one onto these fields. No heavy imports here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgeres.files import write_bytes_atomic  # noqa: F401 -- re-exported: callers import it from here
from edgeres.preprocess import DEFAULT_RESIZE, LEGACY_RESIZE, Resize


class Arch(str, Enum):
    RESNET50 = "resnet50"
    RESNET50V2 = "resnet50v2"
    RESNET_TINY = "resnet-tiny"  # 4 stages x 1 bottleneck block, 1/4 width: tests and smoke runs


class Precision(str, Enum):
    AUTO = "auto"  # mixed_float16 on GPU, float32 on CPU
    FLOAT32 = "float32"
    MIXED = "mixed"


class StrategyKind(str, Enum):
    AUTO = "auto"  # TF_CONFIG -> multi-worker, >1 GPU -> mirrored, else the default device
    DEFAULT = "default"
    MIRRORED = "mirrored"  # all local GPUs (or all logical CPUs, for tests)
    MULTI_WORKER = "multi-worker"


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None  # None: $EDGERES_DATA, then the cats_and_dogs_filtered download
    out: str = "runs/cats-dogs"
    arch: str = "resnet50"
    # auto: ImageNet when Keras's cache has it or it downloads, else none (edgeres.model.resolve_weights)
    weights: str = "auto"  # auto | imagenet | none | PATH to a Keras notop weights file
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.2
    seed: int = 0
    # None: to suit the weights (train._with_recipe): pretrained -> frozen, then as many epochs of
    # fine-tuning; from scratch -> neither. A run's config.json holds the values it used.
    freeze_backbone: bool | None = None
    fine_tune_epochs: int | None = None  # after a frozen-backbone phase: epochs with the top stage unfrozen
    fine_tune_stages: int = 1
    val_fraction: float = 0.2  # only for a flat ROOT/<class>/ layout
    max_per_class: int | None = None  # subsample each class (validation gets half): quick runs
    precision: Precision = Precision.AUTO
    jit_compile: bool | None = None  # None: XLA on GPU, off on CPU (it costs minutes of tracing there)
    strategy: StrategyKind = StrategyKind.AUTO
    # How images become model input (edgeres.preprocess.Resize); a run exports and evaluates with it.
    resize: Resize = DEFAULT_RESIZE

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def run_resize(train: dict) -> Resize:
    """The resize a run was trained with; runs from before it was recorded used Pillow's antialiasing."""
    value = train.get("resize")
    return Resize(value) if value else LEGACY_RESIZE


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj


def from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from JSON, ignoring keys it does not know (older/newer files)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            continue
        kind = known[key].type
        for enum in (Precision, StrategyKind, Resize):
            if kind == enum.__name__ or kind is enum:
                value = enum(value)
        kwargs[key] = value
    if cls is TrainConfig and "resize" not in data:
        kwargs["resize"] = LEGACY_RESIZE  # written before the resize was recorded
    return cls(**kwargs)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact (those that are importable)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("edgeres", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "ai-edge-quantizer", "numpy", "pillow"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
