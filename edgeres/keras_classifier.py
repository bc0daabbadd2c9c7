"""A training run's Keras model as a classifier beside ``.tflite`` ones (``edgeres evaluate RUN``).

It answers like :class:`edgeres.runtime.Classifier` (``predict_pixels``, ``labels``,
``input_size``, ``resize``), so evaluation feeds it the same pixels it feeds LiteRT. A QAT run's
model runs with its fake quantization on: the forward pass its int8 export reproduces.
TensorFlow is imported here, never by the runtime side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgeres.config import run_resize
from edgeres.runtime import ModelError, Prediction


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "model.keras").is_file() and (path / "config.json").is_file()


class KerasClassifier:
    """``run_dir/model.keras`` in TensorFlow, fed uint8 pixels ``[S, S, 3]``."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        if not is_run_dir(self.path):
            raise ModelError(f"{self.path} is not an edgeres run directory (needs model.keras and config.json).")
        import tensorflow as tf

        import edgeres.qat_model  # noqa: F401 -- registers the fake-quant layers a QAT run saves
        from edgeres.model import load_model
        from edgeres.qat_model import is_qat_model

        config = json.loads((self.path / "config.json").read_text())
        self.model = load_model(self.path / "model.keras")
        size = int(config["train"]["image_size"])
        self.input_size = (size, size)
        self.resize = run_resize(config["train"])
        labels = self.path / "labels.txt"
        self.labels = tuple(labels.read_text().splitlines() if labels.is_file() else config["labels"])
        self.qat = is_qat_model(self.model)
        self.uncertain_below = None  # a band is measured at export; a run has none
        self.backend = "keras/tensorflow" + (" (fake quant)" if self.qat else "")
        self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def predict_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Scores ``[N, classes]`` of uint8 pixels ``[N, S, S, 3]`` (a batch is several times faster)."""
        return np.asarray(self._forward(pixels.astype(np.float32))).astype(np.float32)

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        t = time.perf_counter()
        probs = np.asarray(self._forward(pixels[None].astype(np.float32)))[0].astype(np.float32)
        latency = (time.perf_counter() - t) * 1e3
        index = int(np.argmax(probs))
        return Prediction(self.labels[index], index, float(probs[index]), probs, latency)
