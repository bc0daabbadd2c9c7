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
        check_tf_config(os.environ.get("TF_CONFIG"))
        return MultiWorkerStrategy(), device + " per worker (TF_CONFIG)"
    if kind is StrategyKind.MIRRORED:
        if gpus:
            return tf.distribute.MirroredStrategy(), device
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus), f"{len(cpus)} logical CPU device(s)"
    return tf.distribute.get_strategy(), device


class ClusterError(ValueError):
    """A TF_CONFIG that cannot describe this worker; the message says what is wrong and the fix."""


_TF_CONFIG_FIX = ('Set it as JSON: {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                  '"task": {"type": "worker", "index": 0}}, or unset it to train on this machine alone.')


def check_tf_config(text: str | None) -> dict:
    """The parsed ``TF_CONFIG``, checked before TensorFlow reads it (its own errors are
    tracebacks, or a worker that waits forever for a peer that cannot exist)."""
    import json

    if not text:
        raise ClusterError(f"--strategy multi-worker needs TF_CONFIG, which is not set. {_TF_CONFIG_FIX}")
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({e.msg}, column {e.colno}). {_TF_CONFIG_FIX}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        raise ClusterError(f'TF_CONFIG has no usable "cluster" (each task type must list "host:port" '
                           f"addresses). Received: {str(tf_config.get('cluster') if isinstance(tf_config, dict) else tf_config)[:80]}. {_TF_CONFIG_FIX}")
    if not isinstance(task, dict) or not isinstance(task.get("type"), str):
        raise ClusterError(f'TF_CONFIG has no "task" with a "type" (which of the cluster\'s workers this one is). '
                           f"{_TF_CONFIG_FIX}")
    kind, index = task["type"], task.get("index", 0)
    if kind not in cluster:
        raise ClusterError(f'TF_CONFIG: task type "{kind}" is not in the cluster ({", ".join(cluster)}). {_TF_CONFIG_FIX}')
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise ClusterError(f'TF_CONFIG: task index {index!r} is not one of the cluster\'s {len(cluster[kind])} '
                           f'"{kind}" address(es) (0..{len(cluster[kind]) - 1}). {_TF_CONFIG_FIX}')
    return tf_config


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
