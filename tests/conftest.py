"""Shared fixtures: real photos from the shared data, and a tiny exported model.

Tests point at ``$EDGERES_TEST_DATA`` (CI sets it), else ``../shared/data/cats_and_dogs_filtered``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cats_and_dogs_filtered"


@pytest.fixture(scope="session")
def photos_root() -> Path:
    root = Path(os.environ.get("EDGERES_TEST_DATA", DEFAULT_DATA))
    if not (root / "train").is_dir():
        pytest.fail(f"Test photos not found at {root}: set EDGERES_TEST_DATA to a cats_and_dogs_filtered copy.")
    return root


def make_subset(photos_root: Path, dst_root: Path, counts: dict[str, int]) -> Path:
    """Symlink the first N photos per class of each split: real photos, nothing copied."""
    for split, n in counts.items():
        for cls in ("cats", "dogs"):
            dst = dst_root / split / cls
            dst.mkdir(parents=True)
            for src in sorted((photos_root / split / cls).glob("*.jpg"))[:n]:
                (dst / src.name).symlink_to(src)
    return dst_root


@pytest.fixture(scope="session")
def small_dataset(photos_root, tmp_path_factory) -> Path:
    """60 train + 30 validation photos per class."""
    return make_subset(photos_root, tmp_path_factory.mktemp("cats_dogs_small"), {"train": 60, "validation": 30})


@pytest.fixture(scope="session")
def quant_dataset(photos_root, tmp_path_factory) -> Path:
    """150 train + 100 validation photos per class: enough for accuracy to move in 0.5 pp steps."""
    return make_subset(photos_root, tmp_path_factory.mktemp("cats_dogs_quant"), {"train": 150, "validation": 100})


@pytest.fixture(scope="session")
def trained_run(quant_dataset, tmp_path_factory) -> Path:
    """resnet-tiny at 64 px, trained briefly on real photos (~1 minute on 2 cores)."""
    from edgeres.config import TrainConfig
    from edgeres.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(data=str(quant_dataset), out=str(out), arch="resnet-tiny", image_size=64,
                         batch_size=16, epochs=8, learning_rate=3e-3, seed=0)
    train(config, verbose=0)
    return out


@pytest.fixture(scope="session")
def tiny_export(trained_run, tmp_path_factory):
    """``edgeres export --int8`` of the trained run; returns the ExportReport."""
    from edgeres.export import export

    out = tmp_path_factory.mktemp("export") / "tiny"
    return export(trained_run, out=out, formats=("int8", "float32"), calibration_size=64,
                  max_drop=100.0, log=lambda m: None)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_export) -> Path:
    """A bundle directory: model_int8.tflite, model_float32.tflite, edgeres.json, labels.txt (64 px)."""
    return tiny_export.bundle


REFERENCE_RUN = REPO.parent / "shared" / "models" / "resnet50-160-scratch"


@pytest.fixture(scope="session")
def reference_bundle(photos_root, tmp_path_factory) -> Path:
    """The well-trained reference ResNet-50 (160 px, 79%) exported with the defaults and the
    client-reproducible resize, verified on 300 validation photos (a few minutes on 2 cores)."""
    if not (REFERENCE_RUN / "model.keras").is_file():
        pytest.skip(f"reference model not found at {REFERENCE_RUN}")
    from edgeres.export import export

    out = tmp_path_factory.mktemp("reference") / "resnet50-160"
    export(REFERENCE_RUN, out=out, data=photos_root, resize="bilinear", verify_limit=300,
           layer_report=True, log=lambda m: None)
    return out
