"""Runtime numbers on an exported bundle: wrapper overhead, int8 vs float32, cold start, memory.

    python benchmarks/bench_runtime.py BUNDLE --data ../shared/data/cats_and_dogs_filtered [--threads 2]

- overhead: ``Classifier.predict_pixels`` (quantize, invoke, dequantize) vs a bare
  ``interpreter.invoke()`` on the same tensor (target < 15%), and end to end with JPEG decode
  and resize (``Classifier.predict(path)``), which is reported separately;
- int8 vs float32 median latency (target >= 3.5x at 224 px, 2 threads);
- cold start of ``edgeres predict BUNDLE one.jpg`` as a fresh process (target < 1 s);
- peak RSS of that process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def median_ms(fn, runs: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", type=Path, default=os.environ.get("EDGERES_DATA"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()

    from edgeres.preprocess import load_pixels
    from edgeres.runtime import Classifier

    photos = sorted((Path(args.data) / "validation").rglob("*.jpg"))[:: 50]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
           "threads": args.threads}
    lat = {}
    for variant in ("float32", "int8"):
        clf = Classifier(args.bundle, variant=variant, threads=args.threads, accelerator="cpu")
        px = load_pixels(photos[0], clf.input_size)
        tensor = clf.quantize_input(px)
        interp, idx = clf._interpreter, clf._inp[0]["index"]  # noqa: SLF001 -- the bare baseline

        def raw():
            interp.set_tensor(idx, tensor)
            interp.invoke()

        raw_ms = median_ms(raw, args.runs)
        wrapped_ms = median_ms(lambda: clf.predict_pixels(px), args.runs)
        i = iter(range(10**9))
        e2e_ms = median_ms(lambda: clf.predict(photos[next(i) % len(photos)]), min(args.runs, 60))
        lat[variant] = raw_ms
        out[variant] = {"input": f"{clf.input_size[0]}x{clf.input_size[1]} {clf.input_dtype.name}",
                        "raw_invoke_ms": round(raw_ms, 3), "predict_pixels_ms": round(wrapped_ms, 3),
                        "wrapper_overhead_pct": round(100 * (wrapped_ms / raw_ms - 1), 2),
                        "predict_path_ms (decode+resize+infer)": round(e2e_ms, 3),
                        "end_to_end_overhead_pct": round(100 * (e2e_ms / raw_ms - 1), 1)}
    out["int8_speedup_vs_float32"] = round(lat["float32"] / lat["int8"], 2)

    cold = []
    for _ in range(5):
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).with_name("edgeres")), "predict", str(args.bundle),
                               str(photos[0]), "--json", "--threads", str(args.threads)],
                              capture_output=True, text=True)
        cold.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr
    out["cli_cold_start_s"] = {"median": round(float(np.median(cold)), 3), "min": round(min(cold), 3)}
    out["cli_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
