"""Issue 15: the LiteRT Quantizer (ai-edge-quantizer, AEQ) fed the int8 ranges edgeres computes.

Historical: this compares AEQ with the TensorFlow quantizer edgeres used before it moved to AEQ,
and calls that code (calibrate-only graph, mlir_quantize). Run it from revision bb40e30
(`git worktree add /tmp/pre-aeq bb40e30`); benchmarks/quantizer_comparison.md has the results.

Three steps, two virtual environments (AEQ needs no TensorFlow; edgeres' converter does).
Another run: EDGERES_AEQ_RUN=<run dir> for every step, and export it to out/aeq/<run name>/bundle.

    # 1. main venv: edgeres' bundle, its float32 model, the ranges it chose, 200 validation photos
    .venv/bin/edgeres export runs/resnet-tiny-64 --int8 --out benchmarks/out/aeq/resnet-tiny-64/bundle \
        --data /work/shared/data/cats_and_dogs_filtered --no-layer-report --no-client-check --verify-limit 200
    .venv/bin/python benchmarks/aeq_trial.py ranges
    # 2. AEQ venv (python3 -m venv /tmp/aeqvenv && /tmp/aeqvenv/bin/pip install ai-edge-quantizer)
    /tmp/aeqvenv/bin/python benchmarks/aeq_trial.py aeq
    # 3. main venv: I/O types, integer-only, size, agreement with float32 on the photos
    .venv/bin/python benchmarks/aeq_trial.py eval

Everything is written under benchmarks/out/aeq/<run name>/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# The run to try (EDGERES_AEQ_RUN, default the small 64 px run); its files go to out/aeq/<run name>/.
RUN = Path(os.environ.get("EDGERES_AEQ_RUN", Path(__file__).resolve().parents[1] / "runs" / "resnet-tiny-64"))
OUT = Path(__file__).resolve().parent / "out" / "aeq" / RUN.name
BUNDLE = OUT / "bundle"
DATA = Path("/work/shared/data/cats_and_dogs_filtered")
PHOTOS_PER_CLASS = 100
# One layer kept in float (edgeres --float-layers / AEQ's no_quantize); empty: skip that variant.
FLOAT_LAYER = os.environ.get("EDGERES_AEQ_FLOAT_LAYER", "conv2_block1_1_conv")


def step_ranges() -> None:
    """edgeres' calibrated model (same manifest as the bundle), its per-tensor ranges, the photos."""
    import dataclasses

    from edgeres import calibrate as calib
    from edgeres.config import run_resize
    from edgeres.export import _quiet, _ranged_tensors, _ranges_of, _tensor_names, convert_int8, quantize
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    run = json.loads((RUN / "config.json").read_text())
    size, resize = run["train"]["image_size"], run_resize(run["train"])
    calibration_set = dataclasses.replace(calib.load(BUNDLE / "calibration.txt", DATA), resize=resize.value)
    model = load_model(RUN / "model.keras")
    t = time.perf_counter()
    int8, calibrated = convert_int8(model, calibration_set, size)
    seconds = time.perf_counter() - t
    # The part AEQ would replace: TF's mlir_quantize on the calibrated model (ranges already in it).
    t = time.perf_counter()
    with _quiet():
        quantize(calibrated)
    quantize_seconds = time.perf_counter() - t
    (OUT / "edgeres_int8_rebuilt.tflite").write_bytes(int8)
    if FLOAT_LAYER:
        t = time.perf_counter()
        selective, _ = convert_int8(model, calibration_set, size, float_layers=(FLOAT_LAYER,))
        print(f"edgeres int8 with {FLOAT_LAYER} float: {time.perf_counter() - t:.1f} s")
        (OUT / "edgeres_int8_float_layer.tflite").write_bytes(selective)
    (OUT / "calibrated.tflite").write_bytes(calibrated)
    tensors = _ranged_tensors(calibrated)
    lo, hi = _ranges_of(calibrated, tensors)
    names = _tensor_names(calibrated)
    ranges = {names[t]: [float(a), float(b)] for t, a, b in zip(tensors, lo, hi)}
    (OUT / "ranges.json").write_text(json.dumps(ranges, indent=1))

    paths, labels = [], []
    for label, cls in enumerate(run["labels"]):
        found = sorted((DATA / "validation" / cls).glob("*.jpg"))[:PHOTOS_PER_CLASS]
        paths += found
        labels += [label] * len(found)
    np.save(OUT / "photos.npy", np.stack([load_pixels(p, size, resize) for p in paths]))
    np.save(OUT / "labels.npy", np.array(labels))
    (OUT / "meta.json").write_text(json.dumps({"resize": resize.value, "size": size, "photos": len(paths),
                                               "calibration_images": len(calibration_set.entries),
                                               "edgeres_convert_int8_s": seconds,
                                               "edgeres_quantize_s": quantize_seconds}, indent=1))
    print(f"{len(ranges)} ranged tensors, {len(paths)} photos, convert_int8 {seconds:.1f} s "
          f"(of which quantize {quantize_seconds:.2f} s)")


def step_aeq() -> None:
    """AEQ's public API: Quantizer(float model), static int8 recipe, quantize(calibration_result=...)."""
    from importlib.metadata import version

    from ai_edge_quantizer import qtyping, quantizer, recipe

    float_model = str(BUNDLE / "model_float32.tflite")
    ranges = json.loads((OUT / "ranges.json").read_text())
    photos = np.load(OUT / "photos.npy").astype(np.float32)
    results = {"ai_edge_quantizer": version("ai-edge-quantizer"), "variants": {}}

    def make(uint8_io: bool):
        q = quantizer.Quantizer(float_model)
        q.load_quantization_recipe(recipe.static_wi8_ai8())  # int8 activations, per-channel int8 weights
        if uint8_io:
            # AEQ's policy allows uint8 on the INPUT/OUTPUT pseudo-ops (an extra QUANTIZE at each end).
            u8 = qtyping.TensorQuantizationConfig(num_bits=8, symmetric=False,
                                                  granularity=qtyping.QuantGranularity.TENSORWISE,
                                                  dtype=qtyping.TensorDataType.UINT)
            for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                q.update_quantization_recipe(".*", op, qtyping.OpQuantizationConfig(
                    activation_tensor_config=u8, compute_precision=qtyping.ComputePrecision.INTEGER))
        return q

    # The tensor names and QSV shapes AEQ expects: one image through its own calibrate(), then
    # every entry replaced by edgeres' range (same key, same shape).
    probe = make(False)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=float_model)
    sig_key, sig = next(iter(interp.get_signature_list().items()))
    input_name = sig["inputs"][0]
    template = probe.calibrate({sig_key: [{input_name: photos[:1]}]}, num_threads=1)
    qsvs, missing = {}, []
    for name, qsv in template.items():
        if name in ranges:
            lo, hi = ranges[name]
            qsvs[name] = {"min": np.full_like(np.asarray(qsv["min"], np.float32), lo),
                          "max": np.full_like(np.asarray(qsv["max"], np.float32), hi)}
        else:
            missing.append(name)
            qsvs[name] = qsv
    results["template_shapes"] = sorted({str(np.shape(q["min"])) for q in template.values()})
    # The same ranges without AEQ's calibrate(): {"min": [lo], "max": [hi]} per tensor name, the
    # shape AEQ's profiler-based calibration returns. This is what a migration would pass.
    direct = {name: {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
              for name, (lo, hi) in ranges.items()}
    results["signature"] = [sig_key, input_name]
    results["aeq_qsv_tensors"] = len(template)
    results["edgeres_ranges"] = len(ranges)
    results["matched"] = len(template) - len(missing)
    results["aeq_only"] = missing
    results["edgeres_only"] = sorted(set(ranges) - set(template))
    print(f"AEQ wants {len(template)} QSVs; edgeres ranges {len(ranges)}; matched {results['matched']}")
    for name in missing:
        print("  AEQ-only (kept AEQ's 1-image range):", name)

    for variant, uint8_io, calibration in (("aeq_int8_io", False, qsvs), ("aeq_uint8_io", True, qsvs),
                                           ("aeq_uint8_io_direct", True, direct),
                                           ("aeq_uint8_io_float_layer", True, direct)):
        if variant.endswith("float_layer") and not FLOAT_LAYER:
            continue
        q = make(uint8_io)
        if variant.endswith("float_layer"):
            q.update_quantization_recipe(regex=FLOAT_LAYER, operation_name="*", algorithm_key="no_quantize")
        t = time.perf_counter()
        try:
            res = q.quantize(calibration_result=calibration, enable_progress_report=False)
        except Exception as e:  # record the failure, it is the finding
            results["variants"][variant] = {"error": f"{type(e).__name__}: {e}"}
            print(variant, "failed:", e)
            continue
        seconds = time.perf_counter() - t
        (OUT / f"{variant}.tflite").write_bytes(bytes(res.quantized_model))
        results["variants"][variant] = {"quantize_s": seconds}
        print(f"{variant}: quantize {seconds:.2f} s, {len(res.quantized_model)} bytes")
    (OUT / "aeq.json").write_text(json.dumps(results, indent=1))


def _run(path: Path, photos: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = []
    for x in photos:
        x = x[None].astype(np.float32)
        if i["dtype"] != np.float32:
            scale, zp = i["quantization"]
            info = np.iinfo(i["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        interp.set_tensor(i["index"], x.astype(i["dtype"]))
        interp.invoke()
        y = interp.get_tensor(o["index"])[0].astype(np.float32)
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            y = (y - zp) * scale
        probs.append(y)
    return np.stack(probs)


def _tensor_table(path: Path) -> dict:
    """name -> (type, scales, zero points, constant data) for every tensor of subgraph 0."""
    from ai_edge_litert import schema_py_generated as schema

    blob = path.read_bytes()
    model = schema.Model.GetRootAs(blob, 0)
    graph = model.Subgraphs(0)
    table = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        scales = q.ScaleAsNumpy() if q is not None and q.ScaleLength() else None
        zps = q.ZeroPointAsNumpy() if q is not None and q.ZeroPointLength() else None
        buf = model.Buffers(t.Buffer())
        data = bytes(buf.DataAsNumpy()) if buf is not None and buf.DataLength() else None
        if data is None and buf is not None and buf.Offset() > 1:  # large models keep buffers past the flatbuffer
            data = blob[buf.Offset():buf.Offset() + buf.Size()]
        table[t.Name().decode()] = (t.Type(), scales, zps, data)
    return table


def compare_tensors(a: Path, b: Path) -> dict:
    """Tensor by tensor (matched by name): same type, scales, zero points and constant bytes?"""
    ta, tb = _tensor_table(a), _tensor_table(b)
    common = sorted(set(ta) & set(tb))
    differ = []
    for name in common:
        (ty_a, s_a, z_a, d_a), (ty_b, s_b, z_b, d_b) = ta[name], tb[name]
        same_scale = (s_a is None) == (s_b is None) and (s_a is None or np.array_equal(s_a, s_b))
        same_zp = (z_a is None) == (z_b is None) and (z_a is None or np.array_equal(z_a, z_b))
        if ty_a != ty_b or not same_scale or not same_zp or d_a != d_b:
            entry = {"tensor": name, "type": [ty_a, ty_b], "same_scale": bool(same_scale),
                     "same_zero_point": bool(same_zp), "same_data": d_a == d_b}
            if d_a and d_b and d_a != d_b and len(d_a) == len(d_b) and ty_a == ty_b == 2:  # INT32 biases
                x, y = np.frombuffer(d_a, np.int32), np.frombuffer(d_b, np.int32)
                entry["int32_elements_differing"] = int((x != y).sum())
                entry["int32_elements"] = int(x.size)
                entry["int32_max_abs_diff"] = int(np.abs(x.astype(np.int64) - y).max())
            differ.append(entry)
    return {"tensors": [len(ta), len(tb)], "common_names": len(common), "differing": differ,
            "only_first": sorted(set(ta) - set(tb)), "only_second": sorted(set(tb) - set(ta))}


def _run_raw(path: Path, photos: np.ndarray) -> np.ndarray:
    """The uint8 model's raw output bytes (no dequantization), for a bit-exact comparison."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    out = []
    for x in photos:
        interp.set_tensor(i["index"], x[None].astype(i["dtype"]))
        interp.invoke()
        out.append(interp.get_tensor(o["index"]).copy())
    return np.concatenate(out)


def step_eval() -> None:
    from ai_edge_litert import schema_py_generated as schema

    from edgeres.export import float_tensors

    photos, labels = np.load(OUT / "photos.npy"), np.load(OUT / "labels.npy")
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    models = {"float32 (edgeres bundle)": BUNDLE / "model_float32.tflite",
              "edgeres int8 (bundle)": BUNDLE / "model_int8.tflite",
              "edgeres int8 (rebuilt, no metadata)": OUT / "edgeres_int8_rebuilt.tflite",
              "AEQ int8, edgeres ranges, int8 I/O": OUT / "aeq_int8_io.tflite",
              "AEQ int8, edgeres ranges, uint8 I/O": OUT / "aeq_uint8_io.tflite",
              f"edgeres int8, {FLOAT_LAYER} float": OUT / "edgeres_int8_float_layer.tflite",
              f"AEQ int8 uint8 I/O, {FLOAT_LAYER} float": OUT / "aeq_uint8_io_float_layer.tflite"}
    reference = _run(models["float32 (edgeres bundle)"], photos)
    rows = {}
    for name, path in models.items():
        if not path.is_file():
            rows[name] = {"missing": True}
            continue
        blob = path.read_bytes()
        graph = schema.Model.GetRootAs(blob, 0).Subgraphs(0)

        def io(t):
            tensor = graph.Tensors(t)
            q = tensor.Quantization()
            quant = (round(float(q.Scale(0)), 6), int(q.ZeroPoint(0))) if q is not None and q.ScaleLength() else None
            return type_names[tensor.Type()], quant

        model = schema.Model.GetRootAs(blob, 0)
        op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        ops = {}
        for k in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(k).OpcodeIndex())
            op = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            ops[op] = ops.get(op, 0) + 1
        t = time.perf_counter()
        probs = _run(path, photos)
        seconds = time.perf_counter() - t
        dp = np.abs(probs - reference)
        rows[name] = {"bytes": len(blob), "input": io(graph.Inputs(0)), "output": io(graph.Outputs(0)),
                      "float_tensors": len(float_tensors(blob)), "ops": ops,
                      "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                      "mean_abs_dp": float(dp.mean()), "max_abs_dp": float(dp.max()),
                      "accuracy": float((probs.argmax(1) == labels).mean()), "run_200_s": seconds}
        print(name, json.dumps(rows[name]))
    a, b = models["edgeres int8 (rebuilt, no metadata)"], models["AEQ int8, edgeres ranges, uint8 I/O"]
    if a.is_file() and b.is_file():
        rows["compare_edgeres_vs_aeq_uint8"] = compare_tensors(a, b)
        raw = [_run_raw(p, photos) for p in (a, b)]
        rows["compare_edgeres_vs_aeq_uint8"]["raw_outputs_identical"] = bool(np.array_equal(*raw))
        rows["compare_edgeres_vs_aeq_uint8"]["raw_outputs_max_diff"] = int(np.abs(raw[0].astype(int) - raw[1]).max())
        print(json.dumps(rows["compare_edgeres_vs_aeq_uint8"], indent=1)[:3000])
    (OUT / "eval.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    {"ranges": step_ranges, "aeq": step_aeq, "eval": step_eval}[sys.argv[1]]()
