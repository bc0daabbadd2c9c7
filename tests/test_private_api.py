"""The private TensorFlow Lite APIs edgeres's per-layer int8 report relies on
(``edgeres.export.quantize.debug_model``), checked one by one on a tiny graph: when a TensorFlow
upgrade moves or changes one, this fails first, naming the TensorFlow version and the API,
instead of an export failing an hour in. Also the LiteRT Quantizer's public API (0.x) as the
int8 export calls it: uint8 interface, integer-only, the given ranges used, float layers kept."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

# By name from the module: at package level, edgeres.export.quantize is the function.
from edgeres.export.quantize import (PRIVATE_APIS, _ranged_tensors, _ranges_of, _with_ranges, activation_tensors,
                                     calibrate_only, debug_model, quantize, softmax_inputs)

tf = pytest.importorskip("tensorflow")

APIS = {f"{module}.{name}" for module, name, _ in PRIVATE_APIS}
PACKAGE = Path(__file__).resolve().parents[1] / "edgeres"


def _fail(api: str, what: str) -> str:
    usage = next(u for m, n, u in PRIVATE_APIS if f"{m}.{n}" == api)
    return (f"TensorFlow {tf.__version__}: private API {api} {what}. edgeres.export.quantize uses it as: "
            f"{usage}. Pin the TensorFlow version that worked, or move that step to a public API.")


def _resolve(api: str):
    module, _, name = api.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.fail(_fail(api, f"is gone ({e})"))


class _Tiny:
    """A tiny graph (conv-free: mul, add, relu, softmax) and an int8 converter for it."""

    @staticmethod
    def converter(calibrate: bool):
        class Tiny(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
            def __call__(self, x):
                return tf.nn.softmax(tf.nn.relu(x * 0.5 + 1.0) - 2.0)

        tiny = Tiny()
        conv = tf.lite.TFLiteConverter.from_concrete_functions([tiny.__call__.get_concrete_function()], tiny)
        if calibrate:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([np.linspace(0, 255, 8, dtype=np.float32)[None] * k]
                                                   for k in (0.5, 1.0))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.uint8
            conv.inference_output_type = tf.uint8
        return conv


@pytest.fixture(scope="module")
def calibrated() -> bytes:
    """A calibrated float model of the tiny graph through
    :func:`edgeres.export.quantize.calibrate_only`: what the layer report's debug model starts from."""
    conv = _Tiny.converter(calibrate=True)
    api = "tensorflow.lite.python.lite.TFLiteConverterBase._experimental_calibrate_only"
    assert hasattr(conv, "_experimental_calibrate_only"), _fail(api, "is no longer a converter attribute")
    try:
        model = calibrate_only(conv)
    except Exception as e:  # noqa: BLE001 -- any failure here is the API changing
        pytest.fail(_fail(api, f"failed: {type(e).__name__}: {e}"))
    assert _ranged_tensors(model), _fail(api, "gave a model without activation ranges (min/max)")
    return model


@pytest.fixture(scope="module")
def float_model() -> bytes:
    return _Tiny.converter(calibrate=False).convert()


def _tiny_ranges(float_model: bytes) -> dict[str, tuple[float, float]]:
    """Exact ranges of the tiny graph on inputs 0..255: x*0.5+1 in 1..128.5, relu the same,
    minus 2 in -1..126.5, softmax 0..1."""
    from edgeres.tflite import tensor_names

    tensors = activation_tensors(float_model)
    names = tensor_names(float_model)
    known = [(0.0, 255.0), (0.0, 128.5), (0.0, 128.5), (-1.0, 126.5), (0.0, 1.0)]
    assert len(tensors) == len(known), [names[t] for t in tensors]
    return {names[t]: r for t, r in zip(tensors, known)}


def test_every_private_api_is_listed_here():
    source = (PACKAGE / "export" / "quantize.py").read_text()
    assert APIS == {
        "tensorflow.lite.python.lite.TFLiteConverterBase._experimental_calibrate_only",
        "tensorflow.lite.python.convert.mlir_quantize",
        "tensorflow.lite.tools.flatbuffer_utils.convert_bytearray_to_object",
        "tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray",
    }, "edgeres.export.quantize.PRIVATE_APIS changed: check each new API here too"
    for _, name, _ in PRIVATE_APIS:
        assert name.rpartition(".")[2] in source


def test_private_apis_appear_only_in_quantize():
    markers = ("_experimental_calibrate_only", "mlir_quantize", "_pywrap_modify_model_interface", "flatbuffer_utils")
    found = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if any(m in p.read_text() for m in markers))
    assert found == ["export/quantize.py"], found
    # ... and there, only in the report's debug model: the int8 export itself is public API.
    source = (PACKAGE / "export" / "quantize.py").read_text()
    body = source[source.index("def quantize("):source.index("def calibrate_only(")]
    assert not any(m in body for m in markers)


def test_mlir_quantize_signature():
    api = "tensorflow.lite.python.convert.mlir_quantize"
    params = list(inspect.signature(_resolve(api)).parameters)
    assert "enable_numeric_verify" in params, _fail(api, f"has no keyword enable_numeric_verify (takes {params})")


def test_flatbuffer_utils_round_trip(calibrated):
    read = _resolve("tensorflow.lite.tools.flatbuffer_utils.convert_bytearray_to_object")
    _resolve("tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray")
    tensors = _ranged_tensors(calibrated)
    lo, hi = _ranges_of(calibrated, tensors)
    rewritten = _with_ranges(calibrated, tensors, lo - 1.0, hi + 1.0)
    lo2, hi2 = _ranges_of(rewritten, tensors)
    api = "tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray"
    assert np.allclose(lo2, lo - 1.0) and np.allclose(hi2, hi + 1.0), _fail(api, "lost the rewritten ranges")
    assert len(read(rewritten).subgraphs[0].tensors) == len(read(calibrated).subgraphs[0].tensors)


def test_debug_model_uses_the_given_ranges(float_model):
    """The report's model: NumericVerify ops in, every range replaced by the export's by name."""
    ranges = _tiny_ranges(float_model)
    api = "tensorflow.lite.python.convert.mlir_quantize"
    debug, missing = debug_model(_Tiny.converter(calibrate=True), ranges)
    assert debug, _fail(api, "gave nothing with enable_numeric_verify=True")
    assert missing == 0, "the calibrated graph's tensor names no longer match the float32 model's"
    from edgeres.tflite import schema

    model = schema().Model.GetRootAs(debug, 0)
    codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    assert b"NumericVerify" in codes, _fail(api, f"added no NumericVerify op ({codes})")


# -- the LiteRT Quantizer (public, 0.x): what the int8 export relies on ------------------------


def test_activation_tensors_are_what_the_quantizer_needs(float_model):
    """Every tensor the quantizer needs a range for, and no other; the logits found by opcode."""
    tensors = activation_tensors(float_model)
    assert len(softmax_inputs(float_model, tensors)) == 1
    ranges = _tiny_ranges(float_model)
    assert quantize(float_model, ranges)  # complete: the quantizer asked for nothing more
    dropped = dict(list(ranges.items())[1:])
    with pytest.raises(Exception, match="(?i)quantiz"):
        quantize(float_model, dropped)


def test_quantize_gives_uint8_io_integer_only(float_model):
    from edgeres.export.convert import _input_quantization, _io_types, float_tensors
    from edgeres.tflite import TensorType

    blob = quantize(float_model, _tiny_ranges(float_model))
    assert _io_types(blob) == (TensorType.UINT8, TensorType.UINT8), _io_types(blob)
    assert _input_quantization(blob) == (1.0, 0)  # the pinned 0..255 range: raw bytes in
    assert not float_tensors(blob), float_tensors(blob)[:3]
    # The given ranges are the model's: softmax's input -1..126.5 in 255 steps.
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob)
    scales = {d["name"]: d["quantization"][0] for d in interp.get_tensor_details()}
    assert any(abs(s - 127.5 / 255) < 1e-6 for s in scales.values()), scales
    # And it computes the graph: softmax of relu(x/2+1)-2 at x = 0..255 (float reference).
    interp.allocate_tensors()
    x = np.linspace(0, 255, 8).round().astype(np.uint8)[None]
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.float64) / 256
    logits = np.maximum(x[0] * 0.5 + 1.0, 0) - 2.0
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.abs(out[0] - expected).max() < 0.02


def test_float_layers_keep_a_uint8_interface(float_model):
    """An op kept float gets DEQUANTIZE/QUANTIZE around it; the interface stays uint8."""
    from edgeres.export.convert import _io_types, float_tensors
    from edgeres.tflite import TensorType, tensor_names

    relu = next(n for n in tensor_names(float_model) if "Relu" in n)
    blob = quantize(float_model, _tiny_ranges(float_model), float_layers=(relu,))
    assert _io_types(blob) == (TensorType.UINT8, TensorType.UINT8), _io_types(blob)
    assert float_tensors(blob), "float_layers ignored (no float tensor left)"
