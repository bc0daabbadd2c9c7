"""Keras -> ``.tflite``: float32, float16 and dynamic-range through TensorFlow's converter, and
full-integer int8 from the float32 model, edgeres's own activation ranges (:mod:`.ranges`,
measured by running that float32 model in LiteRT) and the LiteRT Quantizer (:mod:`.quantize`).
Also the probes that check what came out (float tensors left, the input's quantization), read
with :mod:`edgeres.tflite`. No private TensorFlow API is used here.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from enum import Enum

import numpy as np

from edgeres import calibrate as calib
from edgeres import tflite
from edgeres.export.quantize import QuantizeError, activation_tensors, quantize, softmax_inputs
from edgeres.export.ranges import DEFAULT_RANGES, Ranges, activation_stats, choose_ranges
from edgeres.preprocess import load_pixels
from edgeres.tflite import TensorType


class Format(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights, float32 compute on CPU; halves the file
    DYNAMIC = "dynamic"  # int8 weights, float activations: no calibration needed
    INT8 = "int8"  # full integer: int8 weights and activations, uint8 I/O




class ExportError(RuntimeError):
    pass


def representative_dataset(calibration_set: calib.CalibrationSet, size: int, limit: int | None = None):
    """Calibration images exactly as the runtime sees them, as float32 ``[1, S, S, 3]``."""
    paths = calibration_set.paths[:limit] if limit else calibration_set.paths

    def gen():
        for p in paths:
            yield [load_pixels(p, size, calibration_set.resize)[None].astype(np.float32)]

    return gen


def _converter(model, fmt: Format, calibration_set, size: int):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if fmt is Format.FLOAT16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt is Format.DYNAMIC:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt is Format.INT8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # per-channel weights by default
        conv.representative_dataset = representative_dataset(calibration_set, size)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv


def convert(model, fmt: Format, calibration_set=None, size: int = 224, *, float_layers=(),
            ranges: Ranges | str = DEFAULT_RANGES, progress: bool = False) -> bytes:
    """Convert a Keras classifier to ``.tflite`` bytes in ``fmt``."""
    fmt = Format(fmt)
    if fmt is Format.INT8:
        return convert_int8(model, calibration_set, size, float_layers=float_layers, ranges=ranges,
                            progress=progress)[0]
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        return _converter(model, fmt, calibration_set, size).convert()


@dataclass(frozen=True)
class Int8Ranges:
    """The activation ranges an int8 model was built with: one ``(lo, hi)`` per activation
    tensor of the float32 model they were measured on, by tensor name."""

    float_model: bytes
    names: list[str]
    lo: np.ndarray
    hi: np.ndarray

    def by_name(self) -> dict[str, tuple[float, float]]:
        return {n: (float(a), float(b)) for n, a, b in zip(self.names, self.lo, self.hi)}


def convert_int8(model, calibration_set, size: int, *, float_layers=(), ranges: Ranges | str = DEFAULT_RANGES,
                 progress: bool = False, float_model: bytes | None = None) -> tuple[bytes, Int8Ranges]:
    """Full-integer int8 ``.tflite`` (uint8 in and out), and the ranges it was built with.
    ``float_model``: the float32 ``.tflite`` of ``model`` when the caller has it already."""
    if calibration_set is None:
        raise ExportError("int8 export needs a calibration set.")
    with warnings.catch_warnings(), _calibration_progress(calibration_set, progress) as advance, _quiet():
        warnings.simplefilter("ignore")
        if float_model is None:
            float_model = _converter(model, Format.FLOAT32, None, size).convert()
        chosen = calibrate_model(model, calibration_set, size, ranges=ranges, advance=advance, float_model=float_model)
        if float_layers:
            names = tflite.tensor_names(float_model)
            if not any(layer in name for name in names for layer in float_layers):
                raise ExportError(f"--float-layers {', '.join(float_layers)} matched no layer; "
                                  f"use names from layer_errors.csv (e.g. conv5_block3_3_conv).")
        try:
            blob = quantize(float_model, chosen.by_name(), float_layers=float_layers)
        except QuantizeError as e:
            raise ExportError(str(e)) from e
    if _io_types(blob) != (TensorType.UINT8, TensorType.UINT8):
        raise ExportError(f"Keeping {', '.join(float_layers) or 'no layer'} in float leaves the model without "
                          f"uint8 input/output; keep layers other than the first and the last in float.")
    if _input_quantization(blob) != (1.0, 0):
        raise ExportError(f"The int8 model's input quantization is {_input_quantization(blob)}, not raw "
                          f"pixels (scale 1, zero point 0); apps feeding image bytes would be wrong.")
    return blob, chosen


@contextlib.contextmanager
def _calibration_progress(calibration_set, enabled: bool):
    """A progress bar over calibration images, drawn on the real stderr while the converter's
    own output is silenced (calibration is most of an int8 export's time)."""
    if not enabled or calibration_set is None:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with os.fdopen(os.dup(2), "w") as stream, Progress(console=Console(file=stream), transient=True) as bar:
        task = bar.add_task("Calibrating int8 ranges", total=len(calibration_set.entries))
        yield lambda: bar.advance(task)


def calibrate_model(model, calibration_set, size: int, *, ranges: Ranges | str = DEFAULT_RANGES,
                    advance=None, float_model: bytes | None = None) -> Int8Ranges:
    """One activation range per tensor of the float32 model, by the rule ``ranges``, from the
    calibration images run through that model in LiteRT (every intermediate tensor kept)."""
    ranges = Ranges(ranges)
    if float_model is None:
        float_model = _converter(model, Format.FLOAT32, None, size).convert()
    tensors = activation_tensors(float_model)
    images = representative_dataset(calibration_set, size)
    stats = activation_stats(float_model, tensors, (x[0] for x in images()), advance=advance,
                             histograms=ranges not in (Ranges.ROBUST, Ranges.MINMAX))
    lo, hi = choose_ranges(ranges, stats, output_side=softmax_inputs(float_model, tensors))
    # Pixels are 0..255 by definition, whatever the calibration images' brightness: pinning the
    # input range makes the uint8 input the raw byte (scale 1, zero point 0), which is what
    # MediaPipe, the examples and edgeres.json's "feed raw pixels" rely on.
    pixels = _input_tensor(float_model)
    if pixels in tensors:
        lo[tensors.index(pixels)], hi[tensors.index(pixels)] = 0.0, 255.0
    names = tflite.tensor_names(float_model)
    return Int8Ranges(float_model, [names[t] for t in tensors], np.asarray(lo), np.asarray(hi))


class _quiet:
    """Silence the converter's fd-level chatter (MLIR dumps) unless EDGERES_VERBOSE is set."""

    def __enter__(self):
        if os.environ.get("EDGERES_VERBOSE"):
            self.saved = None
            return self
        self.saved = os.dup(1), os.dup(2)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)
        return self

    def __exit__(self, *exc):
        if self.saved:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
            for fd in (*self.saved, self.null):
                os.close(fd)


def float_tensors(model_bytes: bytes) -> list[str]:
    """``op:tensor`` for every float32 tensor an operator reads or writes (empty: all integer)."""
    model = tflite.read_model(model_bytes)
    op_names = {v: k for k, v in vars(tflite.schema().BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()]:
                if t >= 0 and graph.Tensors(t).Type() == TensorType.FLOAT32:
                    found.append(f"{name}:{graph.Tensors(t).Name().decode()}")
    return found


def _input_tensor(model_bytes: bytes) -> int:
    return int(tflite.read_model(model_bytes).Subgraphs(0).Inputs(0))


def _input_quantization(model_bytes: bytes) -> tuple[float, int] | None:
    q = tflite.io_tensors(model_bytes)[0].Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    return float(q.Scale(0)), int(q.ZeroPoint(0))


def _io_types(model_bytes: bytes) -> tuple[int, int] | None:
    if not model_bytes:
        return None
    tensor_in, tensor_out = tflite.io_tensors(model_bytes)
    return tensor_in.Type(), tensor_out.Type()


_tensor_names = tflite.tensor_names
