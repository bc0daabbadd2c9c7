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
from edgeres.export.quantize import (PRIVATE_APIS, _with_ranges, activation_tensors, debug_model, quantize,
                                     softmax_inputs)

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


@pytest.fixture(scope="module")
def float_model() -> bytes:
    """A tiny float graph (conv-free: mul, add, relu, softmax) as TF's public converter writes it."""

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.nn.softmax(tf.nn.relu(x * 0.5 + 1.0) - 2.0)

    tiny = Tiny()
    return tf.lite.TFLiteConverter.from_concrete_functions([tiny.__call__.get_concrete_function()], tiny).convert()


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
    body = source[source.index("def quantize("):source.index("def debug_model(")]
    assert not any(m in body for m in markers)


def test_mlir_quantize_signature():
    api = "tensorflow.lite.python.convert.mlir_quantize"
    params = list(inspect.signature(_resolve(api)).parameters)
    assert "enable_numeric_verify" in params, _fail(api, f"has no keyword enable_numeric_verify (takes {params})")


def test_flatbuffer_utils_round_trip(float_model):
    read = _resolve("tensorflow.lite.tools.flatbuffer_utils.convert_bytearray_to_object")
    _resolve("tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray")
    tensors = activation_tensors(float_model)
    lo, hi = np.arange(len(tensors)) - 1.0, np.arange(len(tensors)) + 2.5
    ranged = _with_ranges(float_model, tensors, lo, hi)
    graph = read(ranged).subgraphs[0]
    lo2 = np.array([graph.tensors[t].quantization.min[0] for t in tensors])
    hi2 = np.array([graph.tensors[t].quantization.max[0] for t in tensors])
    api = "tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray"
    assert np.allclose(lo2, lo) and np.allclose(hi2, hi), _fail(api, "lost the written ranges")
    assert len(read(ranged).subgraphs[0].tensors) == len(read(float_model).subgraphs[0].tensors)


def test_debug_model_uses_the_given_ranges(float_model):
    """The report's model: NumericVerify ops in, and the given ranges are the ones quantized with."""
    ranges = _tiny_ranges(float_model)
    api = "tensorflow.lite.python.convert.mlir_quantize"
    try:
        debug = debug_model(float_model, ranges)
    except Exception as e:  # noqa: BLE001 -- any failure here is the API changing
        pytest.fail(_fail(api, f"failed: {type(e).__name__}: {e}"))
    from edgeres.tflite import schema

    model = schema().Model.GetRootAs(debug, 0)
    codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    assert b"NumericVerify" in codes, _fail(api, f"added no NumericVerify op ({codes})")
    from ai_edge_litert.interpreter import Interpreter

    scales = [d["quantization"][0] for d in Interpreter(model_content=debug).get_tensor_details()]
    assert any(abs(s - 127.5 / 255) < 1e-6 for s in scales), _fail(api, "ignored the ranges written in")


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
