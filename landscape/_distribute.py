"""Distributed training for ``landscape.train``: ``tf.distribute`` strategies and one loop.

Distributed runs (any strategy other than the default) share one input pipeline and one loop:

* Input: epoch ``e`` visits the training set in the order ``epoch_order(n, seed=seed, epoch=e)``,
  cut into global batches of ``batch_size``. The ``tf.data`` pipeline carries the explicit
  auto-shard policy ``AutoShardPolicy.DATA``: every worker reads the whole in-memory data set
  and ``tf.distribute`` gives replica ``r`` of ``R`` the ``r``-th contiguous slice of each global
  batch (worker ``i``'s replicas come after worker ``i - 1``'s). So every worker takes the same
  number of steps, no example is seen twice in an epoch, and a run with
  ``sync_perturbations=True`` sees the same global batches as a single-device run over the same
  order. (``FILE`` sharding does not apply: the arrays are in memory, not in files.)
* Loop: Keras 3's ``fit`` fails under ``MultiWorkerMirroredStrategy`` (it reduces the first
  input batch across replicas to build the model, keras-team/keras#20585), so distributed runs
  use a small loop that calls ``model.train_step`` (``sam_train_step`` for SAM) in
  ``strategy.run`` -- the step ``fit`` would run -- and drives the callbacks' epoch and batch
  hooks. Epoch logs and the final evaluation are global: the metrics' totals and counts are
  summed over all replicas.
* BatchNorm: each replica normalizes its own slice in training mode and Keras updates each
  replica's moving statistics from it, unsynchronized; at the end of every epoch the loop
  averages them over the replicas, so all workers hold, evaluate and save one model.
* Files: under ``MultiWorkerMirroredStrategy`` every worker must call ``save`` (saving may read
  variables with collectives), but only the chief writes the real path; the others write into a
  temporary directory that is removed at once (``TrainResult.save``, ``CheckpointEvery``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping

import keras
import numpy as np
import tensorflow as tf

from landscape._checks import StrategyName, options

logger = logging.getLogger("landscape")

STRATEGIES = options(StrategyName)
# The jobs of a MultiWorkerMirroredStrategy cluster that train.
_JOBS = ("chief", "worker")
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
)


def _bad_tf_config(rule: str, received: object) -> ValueError:
    return ValueError(f"TF_CONFIG {rule}. Received: {received!r}.")


def parse_tf_config(value: str | None) -> dict:
    """Validate a ``TF_CONFIG`` value for ``MultiWorkerMirroredStrategy`` and return it parsed.

    Args:
        value: The JSON text of ``TF_CONFIG`` (None or empty when the variable is not set).

    Returns:
        The parsed ``{"cluster": {...}, "task": {"type": ..., "index": ...}}``.

    Raises:
        ValueError: One sentence naming what is missing or malformed.
    """
    if not value or not value.strip():
        raise ValueError(
            "Strategy 'multi-worker' needs the TF_CONFIG environment variable, e.g. "
            f"TF_CONFIG='{_TF_CONFIG_EXAMPLE}' (index 1 on the second worker)."
        )
    try:
        config = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos})."
        ) from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise _bad_tf_config("must be a JSON object with 'cluster' and 'task' entries", config)
    cluster, task = config["cluster"], config["task"]
    if (
        not isinstance(cluster, dict)
        or not cluster
        or any(
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and ":" in a for a in addresses)
            for addresses in cluster.values()
        )
    ):
        raise _bad_tf_config(
            "'cluster' must map job names to non-empty lists of 'host:port' addresses", cluster
        )
    if set(cluster) - set(_JOBS):
        raise _bad_tf_config(
            f"'cluster' may only have the jobs {_JOBS} for multi-worker training", sorted(cluster)
        )
    if len(cluster.get("chief", [])) > 1:
        raise _bad_tf_config("'cluster' may have at most one chief", cluster["chief"])
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise _bad_tf_config(
            f"'task' must have a 'type' among the cluster's jobs {sorted(cluster)}", task
        )
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _bad_tf_config("'task' must have an integer 'index'", task)
    if not 0 <= index < len(cluster[task["type"]]):
        raise _bad_tf_config(
            f"'task' index must be in [0, {len(cluster[task['type']])}) for job {task['type']!r}",
            task,
        )
    return config


# A process sets up collective ops once: the MultiWorkerMirroredStrategy, made on first use and
# shared by later calls (a second one in the same process is fragile: workers lose each other).
_MULTI_WORKER: dict[str, tf.distribute.MultiWorkerMirroredStrategy] = {}


def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """This process's MultiWorkerMirroredStrategy for the cluster in TF_CONFIG."""
    value = os.environ.get("TF_CONFIG")
    parse_tf_config(value)
    if value in _MULTI_WORKER:
        return _MULTI_WORKER[value]
    if _MULTI_WORKER:
        raise ValueError(
            "This process already trains in another multi-worker cluster; TF_CONFIG cannot "
            "change within a process."
        )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        raise RuntimeError(
            "Strategy 'multi-worker' must be created before TensorFlow runs any operation: "
            "call train(strategy='multi-worker') (or create the strategy) at the start of "
            f"the program ({err})."
        ) from err
    _MULTI_WORKER[value] = strategy
    return strategy


# One MirroredStrategy per device set, shared by later calls: MirroredStrategy objects number
# their collective operations from the same start, so a second one in the process would reuse the
# first one's keys (TensorFlow then refuses tensors of another shape under a reused key).
_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def _mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy over the GPUs, or else every logical CPU device of this process.

    On CPU devices the replicas' values are added on one device (``ReductionToOneDevice``)
    instead of by collective operations, which keeps clear of the collective keys of any other
    ``MirroredStrategy`` the program makes.
    """
    gpus = tf.config.list_logical_devices("GPU")
    devices = tuple(d.name for d in gpus or tf.config.list_logical_devices("CPU"))
    if devices not in _MIRRORED:
        cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(
            list(devices), cross_device_ops=cross_device_ops
        )
    return _MIRRORED[devices]


def resolve_strategy(
    strategy: StrategyName | tf.distribute.Strategy | None,
) -> tf.distribute.Strategy | None:
    """The ``tf.distribute.Strategy`` for ``train``'s ``strategy`` argument (None: one device).

    Args:
        strategy: None or ``"default"`` (no distribution), ``"mirrored"`` (a
            ``MirroredStrategy`` over the local GPUs, or else the logical CPU devices; one per
            process, reused),
            ``"multi-worker"`` (a ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``,
            made once per process and reused), or a ``tf.distribute.Strategy``, returned as is.

    Returns:
        The strategy, or None for the default.

    Raises:
        ValueError: For an unknown name, a missing or malformed ``TF_CONFIG``, or a
            ``TF_CONFIG`` that changed since this process made its multi-worker strategy.
        RuntimeError: When ``"multi-worker"`` is asked for after TensorFlow ran an operation.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy is None or strategy == "default":
        return None
    if strategy == "mirrored":
        return _mirrored_strategy()
    if strategy == "multi-worker":
        return _multi_worker_strategy()
    raise ValueError(
        f"Unknown strategy {strategy!r}; expected one of {STRATEGIES} or a tf.distribute.Strategy."
    )


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes files: always, except on the non-chief workers of a cluster.

    The chief is the ``"chief"`` task if the cluster has one, else worker 0.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    if resolver.task_type is None:  # a MultiWorkerMirroredStrategy without a cluster
        return True
    jobs = resolver.cluster_spec().as_dict()
    if "chief" in jobs:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


@contextlib.contextmanager
def chief_path(path: str, strategy: tf.distribute.Strategy | None) -> Iterator[str]:
    """Where this process should write ``path``: ``path`` itself on the chief, else a scratch file.

    A non-chief worker gets a file of the same name in a fresh temporary directory, removed with
    everything in it when the ``with`` block ends (TensorFlow's documented multi-worker pattern:
    every worker saves, because saving may involve collectives, but only the chief's file stays).
    The chief's parent directory is created.

    Example:

    ```python
    with chief_path("out/model.keras", model.distribute_strategy) as target:
        model.save(target)
    ```
    """
    if is_chief(strategy):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="landscape-worker-") as scratch:
        yield os.path.join(scratch, os.path.basename(path))


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which a distributed ``train`` visits ``n`` training examples in ``epoch``.

    A permutation of ``range(n)`` that depends only on ``(seed, epoch)``: the same on every
    worker and in every process, so a run can be reproduced on one device.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def _data_sharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with the explicit auto-shard policy DATA (see the module docstring)."""
    sharding = tf.data.Options()
    sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(sharding)


def _state_averager(net, strategy):
    """A function that averages each replica's copy of the model's float non-trainable state.

    Keras updates non-synchronized state such as BatchNorm's moving mean and variance on each
    replica from that replica's slice of the batch, so the copies drift apart. Their average is
    what a step on the global batch gives for the moving mean (its update is linear in the
    batch mean, and the slices are equal), and the mean of the slices' variances for the moving
    variance. Returns None when there is nothing to average.
    """
    state = [
        v
        for v in net.non_trainable_variables
        if v.aggregation == "none" and keras.backend.is_float_dtype(v.dtype)
    ]
    if not state or strategy.num_replicas_in_sync == 1:
        return None

    def average():
        ctx = tf.distribute.get_replica_context()
        means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in state])
        for v, mean in zip(state, means):
            v.assign(mean)

    return tf.function(lambda: strategy.run(average))


def _to_floats(logs: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items()}


def fit_distributed(
    net, strategy, x, y, *, epochs, batch_size, seed, augmenter, callbacks, verbose
) -> dict:
    """``fit`` for any strategy: ``net.train_step`` in ``strategy.run``; returns the history.

    Args:
        net: The compiled model, made in ``strategy``'s scope.
        strategy: The ``tf.distribute.Strategy``.
        x, y: The training arrays; epoch ``e`` visits them in ``epoch_order(len(x), seed=seed,
            epoch=e)``, in global batches of ``batch_size``.
        augmenter: A Keras layer applied to each batch of x in training mode, or None.
        callbacks, verbose: As for ``fit`` (only the chief shows progress).
    """
    x_all, y_all = tf.convert_to_tensor(x), tf.convert_to_tensor(y)

    def epoch_batches(epoch):
        order = epoch_order(len(x), seed=seed, epoch=epoch)
        ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        ds = ds.map(lambda i: (tf.gather(x_all, i), tf.gather(y_all, i)))
        if augmenter is not None:
            ds = ds.map(lambda a, b: (augmenter(a, training=True), b))
        return strategy.experimental_distribute_dataset(_data_sharded(ds.prefetch(2)))

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        logs = strategy.run(net.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    average_state = _state_averager(net, strategy)
    chief = is_chief(strategy)
    verbose = 1 if verbose == "auto" else verbose
    steps = -(-len(x) // batch_size)
    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=bool(verbose) and chief,
        model=net,
        verbose=verbose if chief else 0,
        epochs=epochs,
        steps=steps,
    )
    net.stop_training = False
    logs: dict[str, float] = {}
    callback_list.on_train_begin()
    for epoch in range(epochs):
        net.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step, batch in enumerate(epoch_batches(epoch)):
            callback_list.on_train_batch_begin(step)
            callback_list.on_train_batch_end(step, _to_floats(train_step(batch)))
        if average_state is not None:  # every replica (and the chief's files) has one model
            average_state()
        # The epoch's metrics over all replicas: sums of their totals and counts.
        logs = _to_floats(net.get_metrics_result())
        callback_list.on_epoch_end(epoch, logs)
        if net.stop_training:
            break
    callback_list.on_train_end(logs)
    return net.history.history


def evaluate_distributed(net, strategy, x, y, *, batch_size: int) -> tuple[float, float]:
    """(loss, accuracy) on ``(x, y)`` in inference mode, summed over all replicas."""
    ds = _data_sharded(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))

    @tf.function(reduce_retracing=True)
    def test_step(batch):
        strategy.run(net.test_step, args=(batch,))

    net.reset_metrics()
    for batch in strategy.experimental_distribute_dataset(ds):
        test_step(batch)
    logs = net.get_metrics_result()
    return float(logs["loss"]), float(logs["accuracy"])
