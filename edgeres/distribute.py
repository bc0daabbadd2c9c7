"""Training on several devices or machines: the tf.distribute strategy a run asks for, which
worker is the chief, and how a tf.data pipeline is split between workers."""

from __future__ import annotations

import os

import tensorflow as tf

from edgeres.config import StrategyKind


def strategy_for(kind: StrategyKind):
    """``(strategy, device description)`` for ``kind``; MultiWorkerMirroredStrategy must be made
    before TensorFlow runs anything else."""
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
    if kind is StrategyKind.AUTO:
        kind = (StrategyKind.MULTI_WORKER if os.environ.get("TF_CONFIG")
                else StrategyKind.MIRRORED if len(gpus) > 1 else StrategyKind.DEFAULT)
    if kind is StrategyKind.MULTI_WORKER:
        return MultiWorkerStrategy(), device + " per worker (TF_CONFIG)"
    if kind is StrategyKind.MIRRORED:
        if gpus:
            return tf.distribute.MirroredStrategy(), device
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus), f"{len(cpus)} logical CPU device(s)"
    return tf.distribute.get_strategy(), device


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose ``reduce`` takes a nest of values, as MirroredStrategy's does.

    Two Keras 3.15 / TF 2.21 mismatches, both fatal before the first step on every worker:
    ``fit``/``evaluate`` reduce the first ``(x, y)`` batch across replicas to build the model,
    and the collective ``_reduce_to`` takes a single value, not a tuple ("Attempt to convert a
    value (PerReplica:{...}) with an unsupported type ... to a Tensor"); then each step reduces
    its scalar logs with ``axis=0`` ("Invalid reduction dimension 0 for input with 0
    dimensions", tensorflow/tensorflow#72388). A scalar is reduced across replicas only.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(v):
            first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            rank = getattr(getattr(first, "shape", None), "rank", None)
            return parent.reduce(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def is_chief(strategy) -> tuple[bool, int]:
    """``(is_chief, worker index)``: the chief is task ``chief``, else worker 0 (TF's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_id = int(resolver.task_id or 0)
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and task_id == 0), task_id


def shard_by_data(ds):
    """Split batches between workers by element (AutoShardPolicy.DATA), set here on purpose.

    The pipeline starts from a list of file names (``from_tensor_slices``), not from files
    TensorFlow could give each worker, so the default (FILE, falling back to DATA) would only
    warn. With DATA every worker decodes the whole (cached) split and keeps its share of each
    global batch; the shuffle and augmentation seeds are the run's, the same on every worker, so
    the shares never overlap. Without several workers the option changes nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
