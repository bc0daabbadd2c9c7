"""The private TensorFlow Lite APIs edgeres's int8 export relies on (``edgeres.export.quantize``),
checked one by one on a tiny graph: when a TensorFlow upgrade moves or changes one, this fails
first, naming the TensorFlow version and the API, instead of an export failing an hour in."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

# By name from the module: at package level, edgeres.export.quantize is the function.
from edgeres.export.quantize import (PRIVATE_APIS, _ranged_tensors, _ranges_of, _softmax_inputs, _with_ranges,
                                     calibrate_only, quantize)

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
def calibrated() -> bytes:
    """A calibrated float model of a tiny graph (conv-free: mul, add, relu, softmax) through
    :func:`edgeres.export.quantize.calibrate_only`: what the int8 export starts from."""

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.nn.softmax(tf.nn.relu(x * 0.5 + 1.0) - 2.0)

    tiny = Tiny()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([tiny.__call__.get_concrete_function()], tiny)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([np.linspace(0, 255, 8, dtype=np.float32)[None] * k] for k in (0.5, 1.0))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    api = "tensorflow.lite.python.lite.TFLiteConverterBase._experimental_calibrate_only"
    assert hasattr(conv, "_experimental_calibrate_only"), _fail(api, "is no longer a converter attribute")
    try:
        model = calibrate_only(conv)
    except Exception as e:  # noqa: BLE001 -- any failure here is the API changing
        pytest.fail(_fail(api, f"failed: {type(e).__name__}: {e}"))
    assert _ranged_tensors(model), _fail(api, "gave a model without activation ranges (min/max)")
    return model


def test_every_private_api_is_listed_here():
    source = (PACKAGE / "export" / "quantize.py").read_text()
    assert APIS == {
        "tensorflow.lite.python.lite.TFLiteConverterBase._experimental_calibrate_only",
        "tensorflow.lite.python.convert.mlir_quantize",
        "tensorflow.lite.python._pywrap_modify_model_interface.modify_model_interface",
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


def test_mlir_quantize_signature():
    api = "tensorflow.lite.python.convert.mlir_quantize"
    params = list(inspect.signature(_resolve(api)).parameters)
    # quantize() passes its second argument by position: False for per-channel weights kept on.
    assert params[1:2] == ["disable_per_channel"], _fail(api, f"takes {params}")
    missing = {"input_data_type", "output_data_type", "enable_numeric_verify", "denylisted_nodes"} - set(params)
    assert not missing, _fail(api, f"has no keyword {sorted(missing)} (takes {params})")


def test_modify_model_interface_signature():
    api = "tensorflow.lite.python._pywrap_modify_model_interface.modify_model_interface"
    doc = (_resolve(api).__doc__ or "").strip().splitlines()[0]
    assert doc == "modify_model_interface(arg0: str, arg1: str, arg2: int, arg3: int) -> int", _fail(api, f"is {doc!r}")


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
    assert len(_softmax_inputs(calibrated, tensors)) == 1  # the softmax's input, found by opcode


def test_quantize_gives_uint8_io_integer_only(calibrated):
    from edgeres.export.convert import _io_types, float_tensors
    from edgeres.tflite import TensorType

    api = "tensorflow.lite.python.convert.mlir_quantize"
    blob = quantize(calibrated)
    assert _io_types(blob) == (TensorType.UINT8, TensorType.UINT8), _fail(api, f"gave I/O types {_io_types(blob)}")
    assert not float_tensors(blob), _fail(api, f"left float tensors {float_tensors(blob)[:3]}")
    assert quantize(calibrated, debug=True), _fail(api, "gave nothing with enable_numeric_verify=True")


def test_float_nodes_get_a_uint8_interface(calibrated):
    """denylisted_nodes keeps the middle op float, then modify_model_interface gives uint8 I/O back."""
    from edgeres.export.convert import _io_types, _tensor_names, float_tensors
    from edgeres.tflite import TensorType

    relu = [n for n in _tensor_names(calibrated) if "Relu" in n]
    assert relu, _tensor_names(calibrated)
    blob = quantize(calibrated, float_nodes=relu)
    api = "tensorflow.lite.python._pywrap_modify_model_interface.modify_model_interface"
    assert blob, _fail(api, "returned a failure status")
    assert _io_types(blob) == (TensorType.UINT8, TensorType.UINT8), _fail(api, f"gave I/O types {_io_types(blob)}")
    assert float_tensors(blob), _fail("tensorflow.lite.python.convert.mlir_quantize",
                                      "ignored denylisted_nodes (no float tensor left)")
