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
That needs TF's quantizer and flatbuffer object API, both private, listed in
:data:`PRIVATE_APIS` and used only by :func:`debug_model`; ``tests/test_private_api.py`` checks
each one, naming the TF version when one moved.
"""

from __future__ import annotations

import re

import numpy as np

from edgeres import tflite
from edgeres.tflite import TensorType

# (module, attribute, how edgeres calls it): what tests/test_private_api.py checks. Report only.
PRIVATE_APIS = (
    ("tensorflow.lite.python.convert", "mlir_quantize",
     "mlir_quantize(float_model_with_ranges, enable_numeric_verify=True) -> model with NumericVerify ops"),
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


def quantize(float_model: bytes, ranges: dict[str, tuple[float, float]], *, float_layers=(),
             configure=None) -> bytes:
    """Full-integer int8 model from ``float_model`` with the activation ``ranges`` given
    (tensor name -> (lo, hi)): per-channel int8 weights, int8 activations, uint8 input and
    output. Ops whose output tensor name contains one of ``float_layers`` stay float (the
    quantizer puts DEQUANTIZE/QUANTIZE around them and keeps the uint8 interface).
    ``configure(quantizer)``, if given, changes the recipe last (benchmarks/dp_sources.py)."""
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe
    except ImportError as e:
        raise QuantizeError(f"int8 export needs the LiteRT Quantizer ({e}): pip install 'edgeres[train]' "
                            f"(or pip install ai-edge-quantizer==0.10.0)") from e

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
    if configure is not None:
        configure(q)
    qsvs = {name: {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
            for name, (lo, hi) in ranges.items()}
    try:
        result = q.quantize(calibration_result=qsvs, enable_progress_report=False)
    except Exception as e:  # noqa: BLE001 -- AEQ raises plain exceptions; say which step failed
        raise QuantizeError(f"The LiteRT Quantizer (ai-edge-quantizer) failed: {type(e).__name__}: {e}") from e
    # AEQ stores the weights after the flatbuffer, by offset; inline them as TF's converter does.
    return tflite.inline_buffers(bytes(result.quantized_model))


# -- the per-layer report's debug model: TensorFlow, private APIs ------------------------------


def debug_model(float_model: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """The int8 model with NumericVerify ops that TF's QuantizationDebugger reads, built from
    the float32 ``.tflite`` and ``ranges`` (the exported model's own, by tensor name)."""
    from tensorflow.lite.python.convert import mlir_quantize

    tensors = activation_tensors(float_model)
    names = tflite.tensor_names(float_model)
    missing = [names[t] for t in tensors if names[t] not in ranges]
    if missing:
        raise QuantizeError(f"No range for {len(missing)} tensor(s), e.g. {missing[:2]}")
    lo, hi = zip(*(ranges[names[t]] for t in tensors))
    return mlir_quantize(_with_ranges(float_model, tensors, lo, hi), enable_numeric_verify=True)


def _with_ranges(model_bytes: bytes, tensors: list[int], lo, hi) -> bytes:
    """``model_bytes`` with a min/max range written into each of ``tensors``: what TF's
    calibrator leaves in a calibrated model, and what its quantizer reads."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
    graph = model.subgraphs[0]
    for t, a, b in zip(tensors, lo, hi):
        q = graph.tensors[t].quantization or flatbuffer_utils.schema_fb.QuantizationParametersT()
        q.min, q.max = [float(a)], [float(b)]
        graph.tensors[t].quantization = q
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
