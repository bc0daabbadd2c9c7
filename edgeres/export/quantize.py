"""The only place edgeres uses TensorFlow Lite's private or experimental APIs.

The int8 path needs three things TensorFlow's public converter does not offer: a float model
that carries activation ranges instead of a quantized one (so edgeres can put its own ranges
in), the quantizer run on such a model, and a uint8 interface for a model with float layers.
Each private API is listed in :data:`PRIVATE_APIS`; ``tests/test_private_api.py`` imports
every one and checks the signature used here, naming the TensorFlow version when one moved.
LiteRT's public alternative is the LiteRT Quantizer (``ai-edge-quantizer``); see issue 15.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeres.tflite import TensorType

# (module, attribute, how edgeres calls it): what tests/test_private_api.py checks.
PRIVATE_APIS = (
    ("tensorflow.lite.python.lite", "TFLiteConverterBase._experimental_calibrate_only",
     "converter._experimental_calibrate_only = True; converter.convert() -> calibrated float model"),
    ("tensorflow.lite.python.convert", "mlir_quantize",
     "mlir_quantize(model, False, input_data_type=, output_data_type=) / (model, enable_numeric_verify=True)"
     " / (model, denylisted_nodes=[...])"),
    ("tensorflow.lite.python._pywrap_modify_model_interface", "modify_model_interface",
     "modify_model_interface(src_path, dst_path, input_type, output_type) -> 0 on success"),
    ("tensorflow.lite.tools.flatbuffer_utils", "convert_bytearray_to_object",
     "convert_bytearray_to_object(bytes) -> ModelT"),
    ("tensorflow.lite.tools.flatbuffer_utils", "convert_object_to_bytearray",
     "convert_object_to_bytearray(ModelT) -> bytearray"),
)

_SOFTMAX = 25  # BuiltinOperator.SOFTMAX in the TFLite schema


def calibrate_only(converter) -> bytes:
    """A float ``.tflite`` with one min/max range per activation tensor, from ``converter``'s
    representative dataset, instead of a quantized model (what TF's QuantizationDebugger uses)."""
    converter._experimental_calibrate_only = True  # noqa: SLF001
    return converter.convert()


def quantize(calibrated: bytes, *, float_nodes=(), debug: bool = False) -> bytes:
    """int8 model from a calibrated one: uint8 in and out, per-channel weights; ``float_nodes``
    (tensor names) stay float; ``debug`` adds the NumericVerify ops QuantizationDebugger reads."""
    import tensorflow as tf
    from tensorflow.lite.python import _pywrap_modify_model_interface as mmi
    from tensorflow.lite.python.convert import mlir_quantize

    if debug:
        return mlir_quantize(calibrated, enable_numeric_verify=True)
    if not float_nodes:
        # What TFLiteConverter does for full-integer with uint8 I/O, given these ranges.
        return mlir_quantize(calibrated, False, input_data_type=tf.uint8, output_data_type=tf.uint8)
    blob = mlir_quantize(calibrated, denylisted_nodes=list(float_nodes))
    # Float I/O at this point; give the model the same uint8 interface as full int8. The tool
    # can return success yet leave a float input (when the first layer stays float): the caller
    # checks the interface itself, since edgeres.json promises uint8 pixels.
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d, "in.tflite"), Path(d, "out.tflite")
        src.write_bytes(blob)
        status = mmi.modify_model_interface(str(src), str(dst), int(TensorType.UINT8), int(TensorType.UINT8))
        return dst.read_bytes() if status == 0 and dst.is_file() else b""


# -- the ranges inside a calibrated model ------------------------------------------------------


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


def _softmax_inputs(calibrated: bytes, tensors: list[int]) -> list[int]:
    """Positions in ``tensors`` of the tensors that feed a SOFTMAX (the logits)."""
    model = _graph(calibrated)
    graph = model.subgraphs[0]
    softmax = {i for i, code in enumerate(model.operatorCodes)
               if max(code.builtinCode, code.deprecatedBuiltinCode) == _SOFTMAX}
    feeding = {int(op.inputs[0]) for op in graph.operators if op.opcodeIndex in softmax}
    return [j for j, t in enumerate(tensors) if t in feeding]
