"""GPU checks, for a machine that has one: what ran where, and how fast.

    python benchmarks/gpu_check.py litert MODEL.tflite [MODEL.tflite ...]
    python benchmarks/gpu_check.py keras-train [--sizes 224 128] [--batch 128]

``litert``: loads each model with ``--accelerator gpu`` through edgeres's Classifier (LiteRT
CompiledModel, GPU accelerator; needs a Vulkan loader on Linux), prints the backend it got
(or the reason it fell back), whether every op is on the GPU, GPU vs CPU latency and the largest
probability difference between the two on the same random pixels.

``keras-train``: ResNet-50 training throughput (img/s) with mixed precision and XLA on tensors
already in memory, on whatever Keras backend is installed. For the TensorFlow pipeline itself
(tf.data vs in-memory) use benchmarks/bench_train.py, which also runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def check_litert(models: list[str], runs: int) -> list[dict]:
    import numpy as np

    from edgeres.runtime import Classifier

    results = []
    for model in models:
        messages: list[str] = []
        t0 = time.perf_counter()
        gpu = Classifier(model, accelerator="gpu", log=messages.append)
        gpu_load = (time.perf_counter() - t0) * 1e3
        cpu = Classifier(model, accelerator="cpu")
        rng = np.random.default_rng(0)
        diffs, lat = [], {"gpu": [], "cpu": []}
        for i in range(runs + 5):
            px = rng.integers(0, 256, (*cpu.input_size, 3), dtype=np.uint8)
            pg, pc = gpu.predict_pixels(px), cpu.predict_pixels(px)
            if i >= 5:  # warm-up excluded
                lat["gpu"].append(pg.latency_ms)
                lat["cpu"].append(pc.latency_ms)
                diffs.append(float(np.max(np.abs(pg.probabilities - pc.probabilities))))
        results.append({
            "model": model, "backend": gpu.backend, "fallback_message": messages,
            "gpu_load_ms": round(gpu_load, 1),
            "p50_ms": {k: round(float(np.median(v)), 3) for k, v in lat.items()},
            "cpu_threads": cpu.threads, "max_abs_prob_diff_gpu_vs_cpu": round(max(diffs), 5),
            "same_top1": bool(all(d < 0.5 for d in diffs)),
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def keras_train(sizes: list[int], batch: int, steps: int) -> list[dict]:
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy("mixed_float16")
    results = []
    for size in sizes:
        model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=2)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy",
                      jit_compile=True)
        x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = np.random.default_rng(1).integers(0, 2, (batch,))
        t0 = time.perf_counter()
        model.train_on_batch(x, y)  # compile (XLA) + first step
        first = time.perf_counter() - t0
        for _ in range(3):
            model.train_on_batch(x, y)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss))  # wait for the device
        dt = time.perf_counter() - t0
        results.append({"backend": keras.backend.backend(), "image_size": size, "batch": batch,
                        "precision": "mixed_float16", "xla": True, "first_step_s": round(first, 1),
                        "img_per_s": round(steps * batch / dt, 1)})
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lit = sub.add_parser("litert")
    lit.add_argument("models", nargs="+")
    lit.add_argument("--runs", type=int, default=50)
    tr = sub.add_parser("keras-train")
    tr.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    tr.add_argument("--batch", type=int, default=128)
    tr.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "gpu": gpu_name(),
                      "python": platform.python_version()}), flush=True)
    if args.what == "litert":
        check_litert(args.models, args.runs)
    else:
        keras_train(args.sizes, args.batch, args.steps)


if __name__ == "__main__":
    main()
