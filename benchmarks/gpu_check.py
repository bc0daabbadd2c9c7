"""GPU checks, for a machine that has one: what ran where, and how fast.

    python benchmarks/gpu_check.py litert MODEL.tflite [MODEL.tflite ...]
    python benchmarks/gpu_check.py keras-train [--sizes 224 128] [--batch 128]
    python benchmarks/gpu_check.py train [--data DIR] [--minutes 4] [--image-size 224] [--smoke]

``litert``: loads each model with ``--accelerator gpu`` through edgeres's Classifier (LiteRT
CompiledModel, GPU accelerator; needs a Vulkan loader on Linux), prints the backend it got
(or the reason it fell back), whether every op is on the GPU, GPU vs CPU latency and the largest
probability difference between the two on the same random pixels.

``keras-train``: ResNet-50 training throughput (img/s) with mixed precision and XLA on tensors
already in memory, on whatever Keras backend is installed. For the TensorFlow pipeline itself
(tf.data vs in-memory) use benchmarks/bench_train.py, which also runs unchanged on a GPU.

``train``: a real training run, the README main job's recipe (ResNet-50 from scratch, AdamW on a
cosine decay, label smoothing, batch 32) on the photos at 224 px, for as many epochs as fit in
``--minutes``: a short probe measures img/s, the epoch count follows from it, then the run
prints img/s and validation accuracy per epoch and a summary. With TensorFlow it is
``edgeres.train`` itself (tf.data pipeline with augmentation, mixed precision and XLA on a GPU);
where Keras runs on JAX (no TensorFlow), the same ``edgeres.model`` builder and compile recipe
are fed edgeres's own pixels (``edgeres.preprocess.load_pixels``) from memory, with random
horizontal flips as the only augmentation; the summary says which engine ran. ``--smoke``:
resnet-tiny, 64 px, 32 photos per class, a one-minute budget, to prove the script on a CPU.
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


def train_run(data: str | None, minutes: float, image_size: int, batch: int, max_epochs: int,
              arch: str, max_per_class: int | None) -> dict:
    import keras
    import numpy as np

    from edgeres import data as data_lib

    backend = keras.backend.backend()
    root = data_lib.resolve_data_dir(data)
    dataset = data_lib.scan(root, seed=0, max_per_class=max_per_class, progress=False)
    n_train = len(dataset.train.samples)
    gpu = _keras_sees_gpu(backend)
    mixed = gpu  # edgeres.train's rule: mixed precision and XLA exactly when there is a GPU
    img_s = _probe_img_per_s(arch, image_size, batch, mixed, jit=gpu or backend == "jax")
    budget = minutes * 60
    epochs = int(max(1, min(max_epochs, (0.8 * budget * img_s) // n_train)))
    print(json.dumps({"probe_img_per_s": round(img_s, 1), "train_images": n_train,
                      "validation_images": len(dataset.validation.samples), "planned_epochs": epochs,
                      "budget_s": budget}), flush=True)
    t0 = time.perf_counter()
    if backend == "tensorflow":
        history, engine = _train_tensorflow(root, arch, image_size, batch, epochs, max_per_class), "edgeres.train (tf.data)"
    else:
        history, engine = _train_in_memory(dataset, arch, image_size, batch, epochs, mixed), \
            f"keras.fit on edgeres pixels, in memory ({backend} backend)"
    wall = time.perf_counter() - t0
    steady = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    result = {
        "what": "train", "engine": engine, "backend": backend, "device": "GPU" if gpu else "CPU", "arch": arch,
        "image_size": image_size, "batch": batch, "precision": "mixed_float16" if mixed else "float32",
        "epochs": len(history), "wall_s": round(wall, 1), "first_epoch_s": round(history[0]["seconds"], 1),
        "img_per_s": round((n_train // batch) * batch / float(np.median(steady)), 1),
        "val_accuracy_last": round(history[-1]["val_accuracy"], 4),
        "val_accuracy_best": round(max(h["val_accuracy"] for h in history), 4),
        "train_images": n_train, "validation_images": len(dataset.validation.samples),
    }
    print(json.dumps(result), flush=True)
    return result


def _keras_sees_gpu(backend: str) -> bool:
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def _probe_img_per_s(arch: str, size: int, batch: int, mixed: bool, jit: bool, steps: int = 8) -> float:
    """Training throughput of the real model on random pixels (compile excluded)."""
    import keras
    import numpy as np

    from edgeres.model import build_classifier, compile_for_training

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    model = build_classifier(arch, 2, size)
    compile_for_training(model, learning_rate=1e-3, decay_steps=100, weight_decay=1e-4, label_smoothing=0.1,
                         jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, batch)]
    for _ in range(3):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss if not isinstance(loss, list) else loss[0]))
    return steps * batch / (time.perf_counter() - t0)


def _train_tensorflow(root, arch, size, batch, epochs, max_per_class) -> list[dict]:
    import tempfile

    from edgeres.config import TrainConfig
    from edgeres.train import train

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(data=str(root), out=f"{tmp}/run", arch=arch, weights="none", image_size=size,
                             batch_size=batch, epochs=epochs, max_per_class=max_per_class, seed=0)
        return train(config, verbose=2).history


def _train_in_memory(dataset, arch, size, batch, epochs, mixed) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    import keras
    import numpy as np

    from edgeres.model import build_classifier, compile_for_training
    from edgeres.preprocess import load_pixels

    def pixels(split):
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            x = np.stack(list(pool.map(lambda p: load_pixels(p, size), split.paths)))
        return x, np.eye(2, dtype="float32")[split.labels]

    xt, yt = pixels(dataset.train)
    xv, yv = pixels(dataset.validation)

    class Flips(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(0)
            self.order = self.rng.permutation(len(xt))

        def __len__(self):
            return len(xt) // batch

        def __getitem__(self, i):
            idx = self.order[i * batch:(i + 1) * batch]
            x = xt[idx].copy()
            flip = self.rng.random(len(idx)) < 0.5
            x[flip] = x[flip, :, ::-1]
            return x.astype("float32"), yt[idx]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(xt))

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                         "seconds": time.perf_counter() - self.t0})
            print(json.dumps({k: round(v, 4) for k, v in rows[-1].items()}), flush=True)

    rows: list[dict] = []
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    model = build_classifier(arch, 2, size)
    compile_for_training(model, learning_rate=1e-3, decay_steps=epochs * (len(xt) // batch), weight_decay=1e-4,
                         label_smoothing=0.1, jit_compile=True)
    model.fit(Flips(), validation_data=(xv.astype("float32"), yv), epochs=epochs, batch_size=None,
              callbacks=[Timer()], verbose=0)
    return rows


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
    rt = sub.add_parser("train", help="a real training run (the README main job's recipe) in a time budget")
    rt.add_argument("--data", default=None, help="dataset root (default: $EDGERES_DATA, the shared copy, the download)")
    rt.add_argument("--minutes", type=float, default=4.0)
    rt.add_argument("--image-size", type=int, default=224)
    rt.add_argument("--batch", type=int, default=32)
    rt.add_argument("--max-epochs", type=int, default=100)
    rt.add_argument("--smoke", action="store_true", help="resnet-tiny, 64 px, 32 photos per class, 1 minute: proves it runs")
    args = ap.parse_args()
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "gpu": gpu_name(),
                      "python": platform.python_version()}), flush=True)
    if args.what == "litert":
        check_litert(args.models, args.runs)
    elif args.what == "train":
        if args.smoke:
            train_run(args.data, min(args.minutes, 1.0), 64, 16, 3, "resnet-tiny", 32)
        else:
            train_run(args.data, args.minutes, args.image_size, args.batch, args.max_epochs, "resnet50", None)
    else:
        keras_train(args.sizes, args.batch, args.steps)


if __name__ == "__main__":
    main()
