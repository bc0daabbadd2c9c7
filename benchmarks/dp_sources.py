"""Where the int8 model's score error (mean |dp| against float32) comes from, on a trained run.

    python benchmarks/dp_sources.py RUN --data ../shared/data/cats_and_dogs_filtered [--limit 300] [--variants a,b]

One set of activation ranges (edgeres's default rule, on the run's 300-image calibration draw),
then the same float32 model quantized by the LiteRT Quantizer in variants that keep one part in
higher precision: the head (logits) in float, int16 activations for a stage or for everything
(int8 weights kept), int8 weights only (float activations). Each is compared with float32 on
the same validation photos (byte-identical pixels). Prints one JSON line per variant and saves
them to benchmarks/out/dp_sources/<run>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "dp_sources"

# name -> list of (regex, what): "float" keeps matching ops float; "a16" gives them int16 activations.
VARIANTS = {
    "int8": [],
    "logits float": [("logits", "float")],
    "logits a16": [("logits", "a16")],
    "conv5 a16": [("conv5_", "a16")],
    "conv4 a16": [("conv4_", "a16")],
    "conv2+conv3 a16": [("conv2_|conv3_", "a16")],
    "all a16": [(".*", "a16")],
    "weights only": [(".*", "weights")],
    "int8 + MSE weights": [(".*", "mse weights")],
    "int8 + OCTAV weights": [(".*", "octav weights")],
}


def build(float_model: bytes, ranges: dict, spec) -> bytes:
    """edgeres's int8 model (``edgeres.export.quantize``) with ``spec``'s recipe changes on top."""
    from ai_edge_quantizer import qtyping, recipe

    from edgeres.export.quantize import quantize

    def configure(q) -> None:
        for regex, what in spec:
            if what == "float":
                q.update_quantization_recipe(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                             algorithm_key="no_quantize")
            elif what == "a16":
                q.add_static_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                    activation_num_bits=16, weight_num_bits=8)
            elif what.endswith(" weights"):
                key = {"mse": "MSE", "octav": "OCTAV"}[what.split()[0]]
                q.add_static_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                    activation_num_bits=8, weight_num_bits=8, algorithm_key=key)
            elif what == "weights":
                q.load_quantization_recipe(recipe.weight_only_wi8_afp32())

    return quantize(float_model, ranges, configure=configure)


def run_model(blob: bytes, photos: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob, num_threads=os.cpu_count())
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    probs = []
    for x in photos:
        interp.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"])[0]
        scale, zero = out["quantization"]
        probs.append((y.astype(np.float64) - zero) * scale if scale else y.astype(np.float64))
    return np.array(probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres import export as ex
    from edgeres.config import run_resize
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    config = json.loads((args.run / "config.json").read_text())
    size, resize = config["train"]["image_size"], run_resize(config["train"])
    dataset = data_lib.scan(args.data, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = dataclasses.replace(calib.draw(dataset, 300, seed=0), resize=resize.value)
    model = load_model(args.run / "model.keras")
    with ex._quiet():
        float_model = ex._converter(model, ex.Format.FLOAT32, None, size).convert()
    t = time.perf_counter()
    chosen = ex.calibrate_model(model, cal, size, float_model=float_model)
    print(f"ranges: {time.perf_counter() - t:.0f} s", flush=True)
    samples = dataset.validation.samples
    samples = samples[:: max(1, len(samples) // args.limit)][: args.limit]
    photos = [load_pixels(s.path, size, resize) for s in samples]
    labels = np.array([s.label for s in samples])
    ref = run_model(float_model, photos)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        t = time.perf_counter()
        try:
            with ex._quiet():
                blob = build(float_model, chosen.by_name(), VARIANTS[name])
            p = run_model(blob, photos)
        except Exception as e:  # noqa: BLE001 -- a variant the tools cannot build is a finding
            row = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        else:
            dp = np.abs(p - ref).max(1)
            row = {"variant": name, "agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
                   "mean_abs_dp": float(dp.mean()), "p99_abs_dp": float(np.percentile(dp, 99)),
                   "accuracy": float((p.argmax(1) == labels).mean()), "float32_accuracy": float((ref.argmax(1) == labels).mean()),
                   "bytes": len(blob), "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    (OUT / f"{args.run.name}.json").write_text(json.dumps({"run": str(args.run), "photos": len(photos), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
