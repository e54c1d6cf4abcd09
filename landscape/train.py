"""Training recipes: the same model trained with SGD, SAM or ASAM (used by the CLI and the demo).

``train`` runs on one device (``strategy=None``), on every local device (``"mirrored"``) or on a
cluster of processes (``"multi-worker"``, configured by ``TF_CONFIG``). The batch size is always
the global one: each step consumes ``batch_size`` examples however many replicas share them.

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
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from landscape.models import build_model
from sam import SAM

logger = logging.getLogger("landscape")

OptimizerName = Literal["sgd", "sam", "asam"]
OPTIMIZERS = ("sgd", "sam", "asam")
StrategyName = Literal["default", "mirrored", "multi-worker"]
STRATEGIES = ("default", "mirrored", "multi-worker")
# The jobs of a MultiWorkerMirroredStrategy cluster that train.
_JOBS = ("chief", "worker")
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'
)
EVAL_BATCH_SIZE = 512  # batch size of the final evaluation (inference only, any size works)


# -- distribution ---------------------------------------------------------------------------------


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
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


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


def _fit_distributed(
    net, strategy, x, y, *, epochs, batch_size, seed, augment, callbacks, verbose
) -> dict:
    """``fit`` for any strategy: ``net.train_step`` in ``strategy.run``; returns the history."""
    x_all, y_all = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    augmenter = _augmenter(x.shape[-1], seed) if augment else None

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


def _evaluate_distributed(net, strategy, x, y) -> tuple[float, float]:
    """(loss, accuracy) on ``(x, y)`` in inference mode, summed over all replicas."""
    ds = _data_sharded(tf.data.Dataset.from_tensor_slices((x, y)).batch(EVAL_BATCH_SIZE))

    @tf.function(reduce_retracing=True)
    def test_step(batch):
        strategy.run(net.test_step, args=(batch,))

    net.reset_metrics()
    for batch in strategy.experimental_distribute_dataset(ds):
        test_step(batch)
    logs = net.get_metrics_result()
    return float(logs["loss"]), float(logs["accuracy"])


class CheckpointEvery(keras.callbacks.Callback):
    """Saves the weights before training and every ``every`` epochs, for trajectory plots.

    Files are ``{directory}/epoch_{epoch:04d}.weights.h5`` (epoch 0 = the initial weights);
    ``checkpoint_paths(directory)`` lists them in order. Under ``MultiWorkerMirroredStrategy``
    every worker saves but only the chief's files stay (see ``chief_path``).
    """

    def __init__(self, directory: str, *, every: int = 1):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Argument `every` must be a positive int. Received: every={every}.")
        self.directory = directory
        self.every = every

    def _save(self, epoch: int) -> None:
        path = os.path.join(self.directory, f"epoch_{epoch:04d}.weights.h5")
        with chief_path(path, self.model.distribute_strategy) as target:
            self.model.save_weights(target)

    def on_train_begin(self, logs=None):
        self._save(0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self._save(epoch + 1)


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoint files ``CheckpointEvery`` wrote in ``directory``, in epoch order."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5"))
    return [os.path.join(directory, n) for n in names]


def _augmenter(channels: int, seed: int) -> keras.Sequential:
    """Random shifts, and horizontal flips for colour images (``channels == 3``)."""
    layers = [keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed)]
    if channels == 3:
        layers.insert(0, keras.layers.RandomFlip("horizontal", seed=seed))
    return keras.Sequential(layers)


def _augmented(x, y, batch_size: int, seed: int):
    """A shuffled tf.data pipeline with random shifts (and horizontal flips for colour images)."""
    augment = _augmenter(x.shape[-1], seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    ds = ds.batch(batch_size).map(lambda a, b: (augment(a, training=True), b))
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """A trained model and its final metrics.

    Attributes:
        model: The trained ``keras.Model``.
        history: ``History.history`` of ``fit``.
        train_loss, train_acc, test_loss, test_acc: ``evaluate`` on the full splits
            (inference mode), after training.
        strategy: The ``tf.distribute.Strategy`` trained under, or None for one device.
    """

    model: keras.Model
    history: dict
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    strategy: tf.distribute.Strategy | None = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes files (False on the non-chief workers of a cluster)."""
        return is_chief(self.strategy)

    def save(self, path: str) -> bool:
        """Save the model as a ``.keras`` file; call it on every worker of a cluster.

        Only the chief writes ``path``; other workers save into a temporary directory that is
        removed at once (saving may need all workers, see ``chief_path``).

        Returns:
            Whether this process wrote ``path``.
        """
        with chief_path(path, self.strategy) as target:
            self.model.save(target)
        return self.is_chief


def make_optimizer(
    name: OptimizerName,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    rho: float | None = None,
    sync_perturbations: bool = False,
) -> keras.optimizers.Optimizer:
    """SGD with momentum, wrapped in SAM (ρ default 0.05) or ASAM (ρ default 0.5) if asked.

    ``sync_perturbations`` is SAM's option (all-reduced ε under ``tf.distribute``); it has no
    meaning for plain SGD and is refused there.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
    if sync_perturbations and name == "sgd":
        raise ValueError(
            "Argument `sync_perturbations` applies to SAM and ASAM only; plain SGD has no "
            "perturbation. Received: optimizer='sgd', sync_perturbations=True."
        )
    base = keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return base
    if name == "sam":
        return SAM(base, rho=0.05 if rho is None else rho, sync_perturbations=sync_perturbations)
    return SAM(
        base,
        rho=0.5 if rho is None else rho,
        adaptive=True,
        sync_perturbations=sync_perturbations,
    )


def train(
    data,
    *,
    model: str = "cnn",
    optimizer: OptimizerName = "sam",
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    rho: float | None = None,
    seed: int = 0,
    model_kwargs: dict | None = None,
    callbacks: list | None = None,
    augment: bool = False,
    schedule: Literal["constant", "cosine"] = "constant",
    verbose: int | str = "auto",
    strategy: StrategyName | tf.distribute.Strategy | None = None,
    sync_perturbations: bool = False,
) -> TrainResult:
    """Train a zoo model on ``((x_train, y_train), (x_test, y_test))`` and evaluate it.

    The same ``seed`` gives the same initial weights and batch order for every optimizer, so an
    SGD run and a SAM run differ only in the optimizer.

    Args:
        data: ``((x_train, y_train), (x_test, y_test))`` as ``landscape.load_dataset`` returns.
        model: ``"mlp"``, ``"cnn"`` or ``"resnet"``. Defaults to "cnn".
        optimizer: ``"sgd"``, ``"sam"`` or ``"asam"``. Defaults to "sam".
        epochs: Defaults to 3.
        batch_size: The global batch size: the examples of one step, over all replicas.
            Defaults to 128.
        learning_rate: SGD learning rate. Defaults to 0.01.
        momentum: SGD momentum. Defaults to 0.9.
        weight_decay: Decoupled weight decay of SGD, or None. Defaults to None.
        rho: SAM radius; None takes 0.05 for SAM and 0.5 for ASAM. Defaults to None.
        seed: Seeds Python, NumPy and TensorFlow. Defaults to 0.
        model_kwargs: Extra arguments of the model builder (e.g. ``{"depth": 14}``).
        callbacks: Keras callbacks for ``fit``. Distributed runs call their train, epoch and
            train-batch hooks.
        augment: Random shifts of the training images (and horizontal flips for colour
            images), applied in the input pipeline so the saved model has no augmentation
            layers. Defaults to False.
        schedule: ``"constant"`` learning rate or ``"cosine"`` decay to 0 over the run.
            Defaults to "constant".
        verbose: ``fit``'s verbosity (only the chief shows progress). Defaults to "auto".
        strategy: None or ``"default"`` (one device, ``model.fit``), ``"mirrored"`` (every local
            GPU, or the logical CPU devices), ``"multi-worker"`` (a cluster described by the
            ``TF_CONFIG`` environment variable; call ``train`` on every worker, before
            TensorFlow runs any operation), or a ``tf.distribute.Strategy``. The model, the
            optimizer and ``compile`` are made in its scope; see the module docstring for
            sharding, the training loop and which worker writes files. Defaults to None.
        sync_perturbations: SAM and ASAM under a distributed strategy: all-reduce the first
            gradient so every replica perturbs the weights by the same ε(w), which makes a step
            equal to single-device SAM on the global batch (for models without BatchNorm,
            which normalizes each replica's slice on its own). False (per-replica ε, as
            google-research/sam) perturbs each replica with its own slice's gradient.
            Defaults to False.

    Returns:
        A ``TrainResult``; under multi-worker training, ``result.save(path)`` on every worker.

    Raises:
        ValueError: For an unknown optimizer, schedule or strategy, a missing or malformed
            ``TF_CONFIG``, or ``sync_perturbations`` with SGD.
        RuntimeError: For ``"multi-worker"`` when TensorFlow already ran an operation in this
            process.

    Example:

    ```python
    # on each worker, with TF_CONFIG set (task index 0 and 1)
    result = train(data, model="resnet", strategy="multi-worker", batch_size=256)
    result.save("sam.keras")  # worker 0 writes sam.keras
    ```
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs an operation.
    dist = resolve_strategy(strategy)
    (x_train, y_train), (x_test, y_test) = data
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of ('constant', 'cosine').")
    lr = learning_rate
    if schedule == "cosine":
        steps = epochs * -(-len(x_train) // batch_size)
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    keras.utils.set_random_seed(seed)
    with dist.scope() if dist is not None else contextlib.nullcontext():
        # SGD gets a plain keras.Model: a SAMModel would wrap a plain optimizer in SAM(rho=0.05).
        net = build_model(
            model,
            x_train.shape[1:],
            num_classes,
            sam_model=optimizer != "sgd",
            **(model_kwargs or {}),
        )
        net.compile(
            optimizer=make_optimizer(
                optimizer,
                learning_rate=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                rho=rho,
                sync_perturbations=sync_perturbations,
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        if dist is not None:
            # What fit does before its first step: metric, loss and optimizer state are made
            # here, in the strategy's scope, not inside the replicated step.
            net._symbolic_build(data_batch=(x_train[:1], y_train[:1]))
    if dist is None:
        logger.info("training %s with %s for %d epochs", model, optimizer, epochs)
        history = _fit(net, x_train, y_train, epochs, batch_size, seed, augment, callbacks, verbose)
        train_loss, train_acc = net.evaluate(
            x_train, y_train, batch_size=EVAL_BATCH_SIZE, verbose=0
        )
        test_loss, test_acc = net.evaluate(x_test, y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    else:
        logger.info(
            "training %s with %s for %d epochs on %d replicas (%s)",
            model,
            optimizer,
            epochs,
            dist.num_replicas_in_sync,
            type(dist).__name__,
        )
        history = _fit_distributed(
            net,
            dist,
            x_train,
            y_train,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            augment=augment,
            callbacks=callbacks,
            verbose=verbose,
        )
        train_loss, train_acc = _evaluate_distributed(net, dist, x_train, y_train)
        test_loss, test_acc = _evaluate_distributed(net, dist, x_test, y_test)
    return TrainResult(
        net,
        history,
        float(train_loss),
        float(train_acc),
        float(test_loss),
        float(test_acc),
        strategy=dist,
    )


def _fit(net, x, y, epochs, batch_size, seed, augment, callbacks, verbose) -> dict:
    """One device: ``model.fit`` on the arrays (Keras shuffles) or the augmented pipeline."""
    if augment:
        history = net.fit(
            _augmented(x, y, batch_size, seed),
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = net.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    return history.history
