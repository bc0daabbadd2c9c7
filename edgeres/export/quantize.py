"""int8 quantization: the LiteRT Quantizer's public API fed edgeres's own ranges, and the one
place edgeres uses TensorFlow Lite's private APIs (the per-layer error report only).

The int8 model is made by the LiteRT Quantizer (``ai-edge-quantizer``, AEQ) from the float32
``.tflite``: static int8 activations, per-channel int8 weights, every op integer, uint8 input
and output (raw pixels in, scale 1 / zero point 0; scores out, 1/256). The activation ranges are
not AEQ's (its calibrator keeps a moving average of each image's min/max): edgeres computes one
range per tensor (:mod:`.ranges`) and hands them to ``Quantizer.quantize(calibration_result=)``
by tensor name. ``benchmarks/quantizer_comparison.md`` measured that this gives the same model
as TensorFlow's quantizer did (same scales and zero points, same agreement).

The per-layer report (:mod:`.report`) still runs TensorFlow's QuantizationDebugger: it measures
each op's *local* error (the op fed the same dequantized input in float and in int8), which
says which layer to keep in float; AEQ's ``validate()`` measures the accumulated error instead.
That needs three private TF APIs, listed in :data:`PRIVATE_APIS` and used only by
:func:`debug_model`; ``tests/test_private_api.py`` checks each one, naming the TF version when
one moved.
"""

from __future__ import annotations

import re

import numpy as np

from edgeres import tflite
from edgeres.tflite import TensorType

# (module, attribute, how edgeres calls it): what tests/test_private_api.py checks. Report only.
PRIVATE_APIS = (
    ("tensorflow.lite.python.lite", "TFLiteConverterBase._experimental_calibrate_only",
     "converter._experimental_calibrate_only = True; converter.convert() -> calibrated float model"),
    ("tensorflow.lite.python.convert", "mlir_quantize",
     "mlir_quantize(calibrated_model, enable_numeric_verify=True) -> model with NumericVerify ops"),
    ("tensorflow.lite.tools.flatbuffer_utils", "convert_bytearray_to_object",
     "convert_bytearray_to_object(bytes) -> ModelT"),
    ("tensorflow.lite.tools.flatbuffer_utils", "convert_object_to_bytearray",
     "convert_object_to_bytearray(ModelT) -> bytearray"),
)

_SOFTMAX = 25  # BuiltinOperator.SOFTMAX in the TFLite schema


class QuantizeError(RuntimeError):
    pass


# -- the tensors that need a range -------------------------------------------------------------


def activation_tensors(float_model: bytes) -> list[int]:
    """Indices of the float activation tensors of subgraph 0, in graph order: the input, then
    every operator's float output. These are the tensors the quantizer asks a range for."""
    graph = tflite.read_model(float_model).Subgraphs(0)
    found = [int(graph.Inputs(i)) for i in range(graph.InputsLength())]
    for i in range(graph.OperatorsLength()):
        for t in graph.Operators(i).OutputsAsNumpy():
            t = int(t)
            if t >= 0 and t not in found and graph.Tensors(t).Type() == TensorType.FLOAT32:
                found.append(t)
    return found


def softmax_inputs(float_model: bytes, tensors: list[int]) -> list[int]:
    """Positions in ``tensors`` of the tensors that feed a SOFTMAX (the logits)."""
    model = tflite.read_model(float_model)
    graph = model.Subgraphs(0)
    softmax = {i for i in range(model.OperatorCodesLength())
               if max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()) == _SOFTMAX}
    feeding = {int(graph.Operators(i).Inputs(0)) for i in range(graph.OperatorsLength())
               if graph.Operators(i).OpcodeIndex() in softmax}
    return [j for j, t in enumerate(tensors) if t in feeding]


# -- the int8 model: LiteRT Quantizer, public API ----------------------------------------------


def quantize(float_model: bytes, ranges: dict[str, tuple[float, float]], *, float_layers=()) -> bytes:
    """Full-integer int8 model from ``float_model`` with the activation ``ranges`` given
    (tensor name -> (lo, hi)): per-channel int8 weights, int8 activations, uint8 input and
    output. Ops whose output tensor name contains one of ``float_layers`` stay float (the
    quantizer puts DEQUANTIZE/QUANTIZE around them and keeps the uint8 interface)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    q = quantizer.Quantizer(bytes(float_model))
    q.load_quantization_recipe(recipe.static_wi8_ai8())  # int8 activations, per-channel int8 weights
    # uint8 at both ends, as TensorFlow's converter gives: one QUANTIZE op at each end, so apps
    # feed image bytes and read scores in 1/256 steps.
    u8 = qtyping.TensorQuantizationConfig(num_bits=8, symmetric=False,
                                          granularity=qtyping.QuantGranularity.TENSORWISE,
                                          dtype=qtyping.TensorDataType.UINT)
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        q.update_quantization_recipe(".*", op, qtyping.OpQuantizationConfig(
            activation_tensor_config=u8, compute_precision=qtyping.ComputePrecision.INTEGER))
    for layer in float_layers:
        q.update_quantization_recipe(regex=re.escape(layer), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                     algorithm_key="no_quantize")
    qsvs = {name: {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
            for name, (lo, hi) in ranges.items()}
    try:
        result = q.quantize(calibration_result=qsvs, enable_progress_report=False)
    except Exception as e:  # noqa: BLE001 -- AEQ raises plain exceptions; say which step failed
        raise QuantizeError(f"The LiteRT Quantizer (ai-edge-quantizer) failed: {type(e).__name__}: {e}") from e
    # AEQ stores the weights after the flatbuffer, by offset; inline them as TF's converter does.
    return tflite.inline_buffers(bytes(result.quantized_model))


# -- the per-layer report's debug model: TensorFlow, private APIs ------------------------------


def calibrate_only(converter) -> bytes:
    """A float ``.tflite`` with one min/max range per activation tensor, from ``converter``'s
    representative dataset, instead of a quantized model (what TF's QuantizationDebugger uses)."""
    converter._experimental_calibrate_only = True  # noqa: SLF001
    return converter.convert()


def debug_model(converter, ranges: dict[str, tuple[float, float]]) -> tuple[bytes, int]:
    """The int8 model with NumericVerify ops that TF's QuantizationDebugger reads, built with
    ``ranges`` (the exported model's own) instead of TF's. ``converter`` is an int8 converter
    whose representative dataset may be a single image: its ranges are all replaced. Also
    returns how many ranged tensors had no range in ``ranges`` (they keep the converter's)."""
    from tensorflow.lite.python.convert import mlir_quantize

    calibrated = calibrate_only(converter)
    tensors = _ranged_tensors(calibrated)
    names = tflite.tensor_names(calibrated)
    lo, hi = _ranges_of(calibrated, tensors)
    missing = 0
    for j, t in enumerate(tensors):
        if names[t] in ranges:
            lo[j], hi[j] = ranges[names[t]]
        else:
            missing += 1
    return mlir_quantize(_with_ranges(calibrated, tensors, lo, hi), enable_numeric_verify=True), missing


def _graph(calibrated: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(calibrated)


def _ranged_tensors(calibrated: bytes) -> list[int]:
    """Indices of the tensors a calibrated model holds a range for (subgraph 0)."""
    graph = _graph(calibrated).subgraphs[0]
    return [i for i, t in enumerate(graph.tensors)
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min)]


def _ranges_of(calibrated: bytes, tensors: list[int]) -> tuple[np.ndarray, np.ndarray]:
    graph = _graph(calibrated).subgraphs[0]
    return (np.array([graph.tensors[t].quantization.min[0] for t in tensors], np.float64),
            np.array([graph.tensors[t].quantization.max[0] for t in tensors], np.float64))


def _with_ranges(calibrated: bytes, tensors: list[int], lo, hi) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    for t, a, b in zip(tensors, lo, hi):
        graph.tensors[t].quantization.min = [float(a)]
        graph.tensors[t].quantization.max = [float(b)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
