"""The device side: run an exported classifier through LiteRT. Never imports TensorFlow.

    clf = Classifier("export/cats-dogs")            # a bundle (its int8 model) or a .tflite
    pred = clf.predict("photo.jpg")                 # path, bytes, PIL image or RGB uint8 array
    pred.label, pred.score, pred.latency_ms

Works where only ``ai-edge-litert`` (or, as a last resort, the old ``tflite_runtime``), numpy
and Pillow are installed. CPU inference goes through XNNPACK with every core; ``gpu`` uses
LiteRT's ``CompiledModel`` GPU accelerator; ``delegate`` loads an external delegate library.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from edgeres._stderr import captured_stderr as _captured_stderr
from edgeres.preprocess import ImageInput, to_pixels

BUNDLE_JSON = "edgeres.json"
# A bundle's models, best first for a device: what Classifier(bundle) loads when not told.
BUNDLE_PREFERENCE = ("int8", "float16", "dynamic", "float32")


class Accelerator(str, Enum):
    AUTO = "auto"  # GPU when the machine shows one, else CPU
    CPU = "cpu"
    GPU = "gpu"


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the reason."""


class AcceleratorError(RuntimeError):
    """The requested accelerator is unavailable and ``strict`` forbids falling back."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    probabilities: np.ndarray = field(repr=False)
    latency_ms: float  # set input + invoke + read output

    def top_k(self, k: int, labels: tuple[str, ...]) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6),
                "latency_ms": round(self.latency_ms, 3)}


def litert_interpreter():
    """``(Interpreter, load_delegate, source)`` from ai-edge-litert, else tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, load_delegate
        except ImportError:
            raise ImportError(
                "No LiteRT runtime found. Install it with: pip install ai-edge-litert"
            ) from None
        return Interpreter, load_delegate, "tflite_runtime"


def resolve_model(path: str | Path, variant: str | None = None) -> Path:
    """A ``.tflite`` path, or the chosen (default: int8) model file of a bundle directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory. Pass a .tflite file or an export bundle directory.")
    if path.is_file():
        return path
    meta = path / BUNDLE_JSON
    if not meta.is_file():
        found = sorted(path.glob("*.tflite"))
        if len(found) == 1:
            return found[0]
        raise ModelError(f"{path}: not an edgeres bundle (no {BUNDLE_JSON}) and holds {len(found)} .tflite files; name one.")
    models = json.loads(meta.read_text()).get("models", {})
    for name in ((variant,) if variant else BUNDLE_PREFERENCE):
        if name in models and (path / models[name]["file"]).is_file():
            return path / models[name]["file"]
    raise ModelError(f"{path}: bundle has no {variant or 'model'} .tflite (has: {', '.join(models) or 'none'}).")


def bundle_info(model_path: Path) -> dict:
    """The ``edgeres.json`` beside a model, or ``{}``."""
    meta = Path(model_path).parent / BUNDLE_JSON
    try:
        return json.loads(meta.read_text()) if meta.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


class Classifier:
    """An image classifier over LiteRT: raw RGB pixels in, probabilities out."""

    def __init__(
        self,
        model: str | Path,
        *,
        threads: int | None = None,
        accelerator: Accelerator | str = Accelerator.AUTO,
        delegate: str | Path | None = None,
        strict: bool = False,
        variant: str | None = None,
        log=None,
    ):
        self.path = resolve_model(model, variant)
        self.threads = threads or os.cpu_count() or 1
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        t0 = time.perf_counter()
        data = _read_model_bytes(self.path)
        Interpreter, load_delegate, self.runtime = litert_interpreter()
        accelerator = Accelerator(accelerator)
        delegates = []
        self.backend = f"CPU (XNNPACK, {self.threads} threads)"
        if delegate is not None:
            try:
                delegates = [load_delegate(str(delegate))]
                self.backend = f"delegate {Path(delegate).name} (CPU fallback for unsupported ops)"
            except (OSError, ValueError, RuntimeError) as e:
                self._fallback(f"delegate {delegate} could not be loaded ({_first_line(e)})", strict)
        with _captured_stderr() as logs:
            try:
                self._interpreter = Interpreter(model_content=data, num_threads=self.threads,
                                                experimental_delegates=delegates or None)
                self._interpreter.allocate_tensors()
                error = None
            except (ValueError, RuntimeError) as e:
                error = e
        # LiteRT's C++ logs go to fd 2; keep warnings and errors, drop its INFO chatter.
        for line in logs.read().splitlines():
            if line.strip() and not line.startswith("INFO:"):
                print(line, file=sys.stderr)
        if error is not None:
            raise ModelError(f"{self.path}: LiteRT could not load the model ({_first_line(error)}). "
                             f"Is the file complete? Re-export it.") from error
        self._inp = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()
        self._check_signature()
        self.input_size = (int(self._inp[0]["shape"][1]), int(self._inp[0]["shape"][2]))
        self.input_dtype = np.dtype(self._inp[0]["dtype"])
        self.output_dtype = np.dtype(self._out[0]["dtype"])
        self.labels = self._labels(data)

        self._compiled = None
        if accelerator is Accelerator.GPU or (accelerator is Accelerator.AUTO and _gpu_visible()):
            self._compiled = self._compile_gpu(strict=strict and accelerator is Accelerator.GPU)
        self.load_ms = (time.perf_counter() - t0) * 1e3

    # -- loading ---------------------------------------------------------------------

    def _check_signature(self) -> None:
        if len(self._inp) != 1 or len(self._out) != 1:
            raise ModelError(f"{self.path}: an image classifier has 1 input and 1 output; this model has "
                             f"{len(self._inp)} input(s) and {len(self._out)} output(s).")
        shape, out_shape = list(self._inp[0]["shape"]), list(self._out[0]["shape"])
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{self.path}: input must be an image [1, H, W, 3]. Received: input shape={shape}.")
        if len(out_shape) != 2 or out_shape[1] < 2:
            raise ModelError(f"{self.path}: output must be class scores [1, N>=2]. Received: output shape={out_shape}.")
        if np.dtype(self._inp[0]["dtype"]) not in (np.uint8, np.int8, np.float32):
            raise ModelError(f"{self.path}: unsupported input dtype {self._inp[0]['dtype']}.")

    def _labels(self, data: bytes) -> tuple[str, ...]:
        from edgeres.metadata import read_labels

        n = int(self._out[0]["shape"][1])
        try:
            candidates = [read_labels(data)]
        except ValueError:  # no metadata: a bare .tflite from elsewhere
            candidates = []
        info = bundle_info(self.path)
        candidates.append(info.get("labels"))
        labels_txt = self.path.parent / "labels.txt"
        if labels_txt.is_file():
            candidates.append(labels_txt.read_text().split())
        for labels in candidates:
            if labels and len(labels) == n:
                return tuple(labels)
        return tuple(f"class_{i}" for i in range(n))

    def _fallback(self, reason: str, strict: bool) -> None:
        if strict:
            raise AcceleratorError(f"{reason}. --strict forbids running on CPU instead.")
        self._log(f"edgeres: {reason}; running on CPU (XNNPACK, {self.threads} threads) instead.")

    def _compile_gpu(self, *, strict: bool):
        try:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator
            from ai_edge_litert.options import CpuOptions, Options
        except ImportError as e:
            self._fallback(f"GPU accelerator needs ai-edge-litert's CompiledModel ({e})", strict)
            return None
        options = Options(hardware_accelerators=HardwareAccelerator.GPU,
                          cpu_options=CpuOptions(num_threads=self.threads))
        with _captured_stderr() as logs:
            try:
                compiled = CompiledModel.from_file(str(self.path), options=options)
                inputs, outputs = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
            except RuntimeError as e:
                compiled, error = None, e
        if compiled is None:
            reason = _gpu_reason(logs.read(), error)
            self._fallback(f"GPU accelerator unavailable ({reason})", strict)
            return None
        self.backend = "GPU (LiteRT CompiledModel" + (")" if compiled.is_fully_accelerated()
                                                     else ", some ops on CPU)")
        return compiled, inputs, outputs

    # -- inference -------------------------------------------------------------------

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image: a path, encoded bytes, a PIL image or an RGB uint8 array."""
        return self.predict_pixels(to_pixels(image, self.input_size))

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """Classify model-sized RGB uint8 pixels ``[H, W, 3]`` (already through ``to_pixels``)."""
        t0 = time.perf_counter()
        raw = self.invoke(self.quantize_input(pixels))
        probs = self.dequantize_output(raw)
        latency = (time.perf_counter() - t0) * 1e3
        i = int(np.argmax(probs))
        return Prediction(self.labels[i], i, float(probs[i]), probs, latency)

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """Map uint8 pixels to the model's input tensor ``[1, H, W, 3]`` (exact for edgeres int8)."""
        x = np.asarray(pixels)[None]
        if self.input_dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self._inp[0]["quantization"]
        if scale == 1.0 and zero == 0 and self.input_dtype == np.uint8:
            return x.astype(np.uint8, copy=False)
        info = np.iinfo(self.input_dtype)
        q = np.round(x.astype(np.float32) / (scale or 1.0)) + zero
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a prepared input tensor; returns the raw output row."""
        if self._compiled is not None:
            compiled, inputs, outputs = self._compiled
            inputs[0].write(tensor)
            compiled.run_by_index(0, inputs, outputs)
            n = int(self._out[0]["shape"][1])
            return outputs[0].read(n, self.output_dtype).reshape(n)
        self._interpreter.set_tensor(self._inp[0]["index"], tensor)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out[0]["index"])[0]

    def dequantize_output(self, raw: np.ndarray) -> np.ndarray:
        if self.output_dtype != np.float32:
            scale, zero = self._out[0]["quantization"]
            raw = (raw.astype(np.float32) - zero) * scale
        probs = raw.astype(np.float32)
        # A model that ends in logits rather than softmax: normalise so scores read the same.
        if probs.min() < 0 or abs(float(probs.sum()) - 1.0) > 0.05:
            e = np.exp(probs - probs.max())
            probs = e / e.sum()
        return probs

    def describe(self) -> dict:
        scale, zero = self._inp[0]["quantization"]
        oscale, ozero = self._out[0]["quantization"]
        return {"path": str(self.path), "runtime": self.runtime, "backend": self.backend,
                "input": {"size": list(self.input_size), "dtype": self.input_dtype.name,
                          "scale": scale, "zero_point": zero},
                "output": {"classes": len(self.labels), "dtype": self.output_dtype.name,
                           "scale": oscale, "zero_point": ozero},
                "labels": list(self.labels), "load_ms": round(self.load_ms, 2)}


def _read_model_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e}).") from e
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a .tflite model (no TFL3 flatbuffer header). "
                         f"Export one with: edgeres export RUN_DIR --int8")
    return data


def _gpu_visible() -> bool:
    """Cheap check for a GPU a LiteRT accelerator could use (Linux DRI/NVIDIA nodes, macOS Metal)."""
    if sys.platform == "darwin":
        return True
    return any(Path("/dev/dri").glob("renderD*")) or Path("/dev/nvidia0").exists()


def _gpu_reason(logs: str, error: Exception | None) -> str:
    for marker in ("No adapters found", "Failed to initialize", "not supported", "Could not load"):
        for line in logs.splitlines():
            if marker in line:
                return line.split("] ", 1)[-1].strip()
    return _first_line(error) if error else "unknown reason"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
