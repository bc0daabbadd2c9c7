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


@pytest.fixture(scope="session")
def small_dataset(photos_root, tmp_path_factory) -> Path:
    """A symlinked subset: 60 train + 30 validation photos per class (nothing copied)."""
    root = tmp_path_factory.mktemp("cats_dogs_small")
    for split, n in (("train", 60), ("validation", 30)):
        for cls in ("cats", "dogs"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for src in sorted((photos_root / split / cls).glob("*.jpg"))[:n]:
                (dst / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A directory with model_float32.tflite and model_int8.tflite of an untrained resnet-tiny, 64 px.

    Replaced by a real ``edgeres export`` of a briefly trained model once export lands.
    """
    import numpy as np
    import tensorflow as tf

    from edgeres.model import build_classifier

    out = tmp_path_factory.mktemp("tiny_bundle")
    model = build_classifier("resnet-tiny", 2, 64)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "model_float32.tflite").write_bytes(conv.convert())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    conv.representative_dataset = lambda: ([rng.integers(0, 256, (1, 64, 64, 3)).astype(np.float32)] for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    (out / "model_int8.tflite").write_bytes(conv.convert())
    (out / "labels.txt").write_text("cats\ndogs\n")
    return out
