"""How int8 activation ranges change int8 faithfulness, on one trained run.

    python benchmarks/ranges_study.py RUN_DIR --data ../shared/data/cats_and_dogs_filtered \
        [--calibration-size 300] [--seed 0]

For every tensor, each calibration image's exact min/max is measured once (float model through
LiteRT, every tensor kept); then several ways of turning them into one range are quantized
(same graph, same weights, only the ranges differ) and compared with float32 on the whole
validation split. Also lists where TensorFlow's calibrator disagrees with the measured global
min/max. Prints a markdown table. Results: benchmarks/reference.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=os.environ.get("EDGERES_DATA"))
    ap.add_argument("--calibration-size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from ai_edge_litert.interpreter import Interpreter

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres.export import (Format, Ranges, _converter, _quiet, _ranged_tensors, _ranges_of, _tensor_names,
                                _with_ranges,
                                activation_stats, calibrate_model, convert, float_tensors, quantize, robust_ranges)
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    size = json.loads((args.run / "config.json").read_text())["train"]["image_size"]
    model = load_model(args.run / "model.keras")
    dataset = data_lib.scan(args.data, progress=False)
    cal = calib.draw(dataset, args.calibration_size, seed=args.seed)
    images = [load_pixels(p, size)[None].astype(np.float32) for p in cal.paths]
    val = [(load_pixels(s.path, size), s.label) for s in dataset.validation.samples]
    labels = np.array([y for _, y in val])

    with _quiet():
        conv = _converter(model, Format.INT8, cal, size)
        conv._experimental_calibrate_only = True
        conv.representative_dataset = lambda: iter([[images[0]]])
        skeleton = conv.convert()
        tf_calibrated = calibrate_model(model, cal, size, ranges=Ranges.MINMAX)
        f32 = convert(model, Format.FLOAT32, size=size)
    tensors = _ranged_tensors(skeleton)
    t = time.perf_counter()
    lo, hi = activation_stats(skeleton, tensors, iter(images))
    print(f"per-image ranges of {len(tensors)} tensors over {len(images)} images: {time.perf_counter() - t:.1f} s")

    tf_lo, tf_hi = _ranges_of(tf_calibrated, tensors)
    names = _tensor_names(skeleton)
    ratio = tf_hi / np.maximum(hi.max(0), 1e-9)
    print("\nWhere TF's calibrator max differs most from the measured global max:")
    for j in np.argsort(-ratio)[:5]:
        short = names[tensors[j]].split(";")[0].split("/")[-3]
        print(f"  {short}: TF {tf_hi[j]:.1f}, measured {hi.max(0)[j]:.1f}; per-image max median "
              f"{np.median(hi[:, j]):.2f}, p99 {np.percentile(hi[:, j], 99):.1f}")

    def run(blob):
        interp = Interpreter(model_content=blob, num_threads=os.cpu_count())
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        probs = []
        for x, _ in val:
            interp.set_tensor(inp["index"], x[None] if inp["dtype"] == np.uint8 else x[None].astype(np.float32))
            interp.invoke()
            p = interp.get_tensor(out["index"])[0]
            if out["dtype"] == np.uint8:
                scale, zero = out["quantization"]
                p = (p.astype(np.float32) - zero) * scale
            probs.append(p)
        return np.array(probs)

    ref = run(f32)
    f_acc = (ref.argmax(1) == labels).mean()

    def pct(a, q):
        return np.percentile(a, q, axis=0)

    candidates = {
        "TF calibrator, global min/max (`--ranges minmax`)": (tf_lo, tf_hi),
        "measured global min/max": (lo.min(0), hi.max(0)),
        "mean of per-image min/max": (lo.mean(0), hi.mean(0)),
        "95th percentile of per-image min/max": (pct(lo, 5), pct(hi, 95)),
        "99th percentile of per-image min/max": (pct(lo, 1), pct(hi, 99)),
        "median over groups of 5": robust_ranges(lo, hi, 5),
        "median over groups of 10 (`--ranges robust`, default)": robust_ranges(lo, hi, 10),
        "median over groups of 20": robust_ranges(lo, hi, 20),
    }
    print(f"\nfloat32 accuracy {100 * f_acc:.1f}% on {len(val)} validation photos; {args.run}\n")
    print("| ranges | int8 accuracy | drop (pp) | top-1 agreement | mean abs prob diff |")
    print("| --- | --- | --- | --- | --- |")
    for name, (a, b) in candidates.items():
        with _quiet():
            blob = quantize(_with_ranges(skeleton, tensors, a, b))
        assert not float_tensors(blob)
        p = run(blob)
        acc = (p.argmax(1) == labels).mean()
        print(f"| {name} | {100 * acc:.1f}% | {100 * (f_acc - acc):+.1f} | {100 * (p.argmax(1) == ref.argmax(1)).mean():.1f}% "
              f"| {np.abs(p - ref).mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
