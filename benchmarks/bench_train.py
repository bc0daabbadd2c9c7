"""Training throughput (img/s): the real tf.data pipeline vs the same model fed in-memory tensors.

    python benchmarks/bench_train.py --data ../shared/data/cats_and_dogs_filtered [--sizes 224 128]
        [--batch-size 16] [--steps 20] [--arch resnet50]

Runs unchanged on a GPU machine: mixed precision and XLA switch on by themselves there (as in
`edgeres train`), and the numbers printed are for that configuration. The pipeline should cost
< 10%: its decode/augment work overlaps the model's step through prefetch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(model, dataset, steps: int, warmup: int) -> float:
    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        model.train_on_batch(*next(iterator))
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(*next(iterator))
    float(np.ravel(loss)[0])  # wait for the device
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("EDGERES_DATA"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arch", default="resnet50")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from edgeres import data as data_lib
    from edgeres.pipeline import make_dataset
    from edgeres.config import Precision, StrategyKind, TrainConfig
    from edgeres.model import build_classifier
    from edgeres.train import _compile, _strategy, _use_mixed_precision

    gpus = tf.config.list_physical_devices("GPU")
    mixed = _use_mixed_precision(Precision.AUTO)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy, device = _strategy(StrategyKind.AUTO)
    dataset = data_lib.scan(data_lib.resolve_data_dir(args.data), progress=False)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "device": device,
                      "gpus": [g.name for g in gpus], "mixed_precision": mixed, "xla": bool(gpus),
                      "tensorflow": tf.__version__}), flush=True)
    for size in args.sizes:
        batch = args.batch_size * strategy.num_replicas_in_sync
        config = TrainConfig(arch=args.arch, image_size=size, batch_size=batch)
        pipeline = make_dataset(dataset.train, image_size=size, batch_size=batch, training=True,
                                         seed=0, num_classes=len(dataset.classes))
        # Fill the decode cache first: epoch 1 decodes JPEGs once, every later epoch reads memory.
        cache_t0 = time.perf_counter()
        for _ in pipeline:
            pass
        cache_s = time.perf_counter() - cache_t0
        x, y = next(iter(pipeline))
        in_memory = tf.data.Dataset.from_tensors((x, y)).cache()
        with strategy.scope():
            model = build_classifier(args.arch, len(dataset.classes), size)
            _compile(model, config, 1e-3, 1000, jit=bool(gpus))
        t_mem = measure(model, in_memory, args.steps, args.warmup)
        t_pipe = measure(model, pipeline, args.steps, args.warmup)
        ips_mem, ips_pipe = args.steps * batch / t_mem, args.steps * batch / t_pipe
        print(json.dumps({
            "arch": args.arch, "image_size": size, "batch_size": batch, "steps": args.steps,
            "img_per_s_in_memory": round(ips_mem, 2), "img_per_s_pipeline": round(ips_pipe, 2),
            "pipeline_overhead_pct": round(100 * (1 - ips_pipe / ips_mem), 1),
            "first_epoch_decode_s": round(cache_s, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
