"""Training recipes: the same model trained with SGD, SAM or ASAM (used by the CLI and the demo).

``train`` runs on one device (``strategy=None``), on every local device (``"mirrored"``) or on a
cluster of processes (``"multi-worker"``, configured by ``TF_CONFIG``). The batch size is always
the global one: each step consumes ``batch_size`` examples however many replicas share them.

Distributed runs (any strategy other than the default) share one input pipeline and one loop,
in ``landscape._distribute`` (sharding, the loop, BatchNorm statistics, which worker writes files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any

import h5py
import keras
import numpy as np

from landscape._checks import OptimizerName, Schedule, StrategyName, choice, integer, options
from landscape._provenance import as_json, provenance
from landscape.models import build_model
from sam import ESAM, GSAM, SAM, FriendlySAM, LookSAM, SAMSchedule, SAMVariant, _compat

logger = logging.getLogger("landscape")

OPTIMIZERS = options(OptimizerName)
EVAL_BATCH_SIZE = 512  # batch size of the final evaluation (inference only, any size works)


class CheckpointEvery(keras.callbacks.Callback):
    """Saves the weights before training and every ``every`` epochs, for trajectory plots.

    Files are ``{directory}/epoch_{epoch:04d}.weights.h5`` (epoch 0 = the initial weights);
    ``checkpoint_paths(directory)`` lists them in order. Under ``MultiWorkerMirroredStrategy``
    every worker saves but only the chief's files stay (see ``chief_path``). Each file's root
    attribute ``provenance`` holds the provenance block (JSON; ``landscape._provenance``).
    """

    def __init__(self, directory: str, *, every: int = 1):
        super().__init__()
        self.directory = directory
        self.every = integer("every", every, 1)

    def _save(self, epoch: int) -> None:
        path = os.path.join(self.directory, f"epoch_{epoch:04d}.weights.h5")
        with _chief_path(path, getattr(self.model, "distribute_strategy", None)) as target:
            self.model.save_weights(target)
            with h5py.File(target, "a") as f:  # Keras's loader reads the groups, not this
                f.attrs["provenance"] = as_json(
                    provenance(settings={"epoch": epoch, "every": self.every})
                )

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
    """Shuffled batches with random shifts (and horizontal flips for colour images): a tf.data
    pipeline on TensorFlow, an ``AugmentedBatches`` PyDataset on the other backends."""
    if keras.backend.backend() != "tensorflow":
        return AugmentedBatches(x, y, batch_size, seed)
    import tensorflow as tf

    augment = _augmenter(x.shape[-1], seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    ds = ds.batch(batch_size).map(lambda a, b: (augment(a, training=True), b))
    return ds.prefetch(tf.data.AUTOTUNE)


class AugmentedBatches(keras.utils.PyDataset):
    """``train``'s augmented input off TensorFlow: every example once per epoch, in a new order
    drawn from ``seed`` each epoch, each batch through ``_augmenter`` (Keras's random layers,
    seeded, on the backend's own ops)."""

    def __init__(self, x, y, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self._augment = _augmenter(x.shape[-1], seed)
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self._augment(self.x[rows], training=True)
        return keras.ops.convert_to_numpy(images), self.y[rows]

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self.x))


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
    strategy: Any = None  # a tf.distribute.Strategy (TensorFlow only) or None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes files (False on the non-chief workers of a cluster)."""
        if self.strategy is None:
            return True
        from landscape._distribute import is_chief

        return is_chief(self.strategy)

    def save(self, path: str) -> bool:
        """Save the model as a ``.keras`` file; call it on every worker of a cluster.

        Only the chief writes ``path``; other workers save into a temporary directory that is
        removed at once (saving may need all workers, see ``chief_path``).

        Returns:
            Whether this process wrote ``path``.
        """
        with _chief_path(path, self.strategy) as target:
            self.model.save(target)
        return self.is_chief


# Options of the SAM family, and the members they apply to (None: every SAM member).
_FAMILY_OPTIONS = {
    "alpha": ("gsam", "looksam"),
    "k": ("looksam",),
    "sigma": ("friendlysam",),
    "lmbda": ("friendlysam",),
    "beta": ("esam",),
    "gamma": ("esam",),
    "perturbed": None,
    "sam_every": None,
    "sam_last": None,
    "sam_probability": None,
}


def _schedule(name, sam_every, sam_last, sam_probability, total_steps, seed):
    """The ``SAMSchedule`` of the schedule options (at most one), or None."""
    given = {k: v for k, v in (("sam_every", sam_every), ("sam_last", sam_last),
                               ("sam_probability", sam_probability)) if v is not None}  # fmt: skip
    if not given:
        return None
    if len(given) > 1 or name == "looksam":
        rule = (
            "at most one schedule" if len(given) > 1 else "no schedule for looksam (k is its own)"
        )
        raise ValueError(f"Argument `{next(iter(given))}` must be {rule}. Received: {given}.")
    if sam_every is not None:
        return SAMSchedule(every=sam_every)
    if sam_last is not None:
        return SAMSchedule(last_fraction=sam_last, total_steps=total_steps)
    return SAMSchedule(probability=sam_probability, seed=seed)


def make_optimizer(
    name: OptimizerName,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    rho: float | None = None,
    sync_perturbations: bool = False,
    total_steps: int | None = None,
    seed: int = 0,
    **family,
) -> keras.optimizers.Optimizer:
    """SGD with momentum, wrapped in SAM (ρ default 0.05), ASAM (ρ 0.5) or a SAM-family member.

    ``sync_perturbations`` is SAM's option (all-reduced ε under ``tf.distribute``); it has no
    meaning for plain SGD and is refused there. ``family`` holds the options of the SAM family
    (``sam.variants``), each refused for a member it does not apply to: ``alpha`` (gsam,
    looksam), ``k`` (looksam), ``sigma``/``lmbda`` (friendlysam), ``beta``/``gamma`` (esam);
    for every SAM member ``perturbed`` (SAM-ON: ``"normalization"`` or a regular expression on
    ``variable.path``) and one schedule: ``sam_every`` (k), ``sam_last`` (a fraction of
    ``total_steps``) or ``sam_probability`` (p, drawn from ``seed``). Unset options take the
    member's defaults.
    """
    choice("optimizer", name, OptimizerName)
    if sync_perturbations and name == "sgd":
        raise ValueError(
            "Argument `sync_perturbations` applies to SAM and ASAM only; plain SGD has no "
            "perturbation. Received: optimizer='sgd', sync_perturbations=True."
        )
    family = {k: v for k, v in family.items() if v is not None}
    for key, value in family.items():
        if key not in _FAMILY_OPTIONS:
            raise TypeError(f"make_optimizer() got an unexpected keyword argument {key!r}")
        members = _FAMILY_OPTIONS[key]
        if name == "sgd" or (members is not None and name not in members):
            applies = "every SAM member" if members is None else ", ".join(members)
            raise ValueError(
                f"Argument `{key}` applies to {applies}, not {name}. Received: {key}={value!r}."
            )
    base = keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return base
    schedule = _schedule(
        name, *(family.pop(k, None) for k in ("sam_every", "sam_last", "sam_probability")),
        total_steps, seed,
    )  # fmt: skip
    common = {"sync_perturbations": sync_perturbations}
    rho = (0.5 if name == "asam" else 0.05) if rho is None else rho
    if name in ("sam", "asam") and not family and schedule is None:
        return SAM(base, rho=rho, adaptive=name == "asam", **common)
    if schedule is not None:
        common["schedule"] = schedule
    if "perturbed" in family:
        common["perturbed"] = family.pop("perturbed")
    members = {"sam": SAMVariant, "asam": SAMVariant, "gsam": GSAM, "looksam": LookSAM,
               "friendlysam": FriendlySAM, "esam": ESAM}  # fmt: skip
    if name == "asam":
        common["adaptive"] = True
    return members[name](base, rho=rho, **family, **common)


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
    schedule: Schedule = "constant",
    verbose: int | str = "auto",
    strategy: StrategyName | Any = None,
    sync_perturbations: bool = False,
    optimizer_options: dict | None = None,
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
            sharding, the training loop and which worker writes files. TensorFlow only (on
            Keras's JAX and PyTorch backends ``train`` runs on one device). Defaults to None.
        sync_perturbations: SAM and ASAM under a distributed strategy: all-reduce the first
            gradient so every replica perturbs the weights by the same ε(w), which makes a step
            equal to single-device SAM on the global batch (for models without BatchNorm,
            which normalizes each replica's slice on its own). False (per-replica ε, as
            google-research/sam) perturbs each replica with its own slice's gradient.
            Defaults to False.
        optimizer_options: Options of the SAM family passed to ``make_optimizer`` (``alpha``,
            ``k``, ``sigma``, ``lmbda``, ``beta``, ``gamma``, ``perturbed``, ``sam_every``,
            ``sam_last``, ``sam_probability``); ``sam_last`` is a fraction of this run's steps,
            and ``sam_probability`` draws from ``seed``. Defaults to None.

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
    dist = _resolve_strategy(strategy)
    (x_train, y_train), (x_test, y_test) = data
    lr = _learning_rate(learning_rate, schedule, epochs, len(x_train), batch_size)
    optimizer_args = {
        "learning_rate": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "rho": rho,
        "sync_perturbations": sync_perturbations,
        "total_steps": epochs * -(-len(x_train) // batch_size),
        "seed": seed,
        **(optimizer_options or {}),
    }
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    keras.utils.set_random_seed(seed)
    first_batch = (x_train[:1], y_train[:1])
    net = _compiled_model(
        model, model_kwargs or {}, optimizer, optimizer_args, first_batch, num_classes, dist
    )
    fit_args = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "augment": augment,
        "callbacks": callbacks,
        "verbose": verbose,
    }
    if dist is None:
        logger.info("training %s with %s for %d epochs", model, optimizer, epochs)
        history, metrics = _fit_and_evaluate(net, data, **fit_args)
    else:
        replicas = f"{dist.num_replicas_in_sync} replicas ({type(dist).__name__})"
        logger.info("training %s with %s for %d epochs on %s", model, optimizer, epochs, replicas)
        history, metrics = _fit_and_evaluate_distributed(net, dist, data, **fit_args)
    return TrainResult(net, history, *(float(m) for m in metrics), strategy=dist)


def _resolve_strategy(strategy):
    """``landscape._distribute.resolve_strategy`` on TensorFlow; one device elsewhere."""
    if strategy is None or strategy == "default":
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"Argument `strategy` names tf.distribute, TensorFlow's distribution, which "
            f"Keras's {keras.backend.backend()} backend does not have: train on one device "
            f"(strategy=None) or on TensorFlow. Received: strategy={strategy!r}."
        )
    from landscape._distribute import resolve_strategy

    return resolve_strategy(strategy)


@contextlib.contextmanager
def _chief_path(path: str, strategy):
    """``landscape._distribute.chief_path`` under a strategy; ``path`` itself without one."""
    if strategy is None or keras.backend.backend() != "tensorflow":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield path
        return
    from landscape._distribute import chief_path

    with chief_path(path, strategy) as target:
        yield target


def _compiled_model(
    model, model_kwargs, optimizer, optimizer_args, first_batch, num_classes, dist
) -> keras.Model:
    """The zoo model compiled with its optimizer, made in ``dist``'s scope (if any)."""
    x, y = first_batch
    with dist.scope() if dist is not None else contextlib.nullcontext():
        # SGD gets a plain keras.Model: a SAMModel would wrap a plain optimizer in SAM(rho=0.05).
        net = build_model(
            model, x.shape[1:], num_classes, sam_model=optimizer != "sgd", **model_kwargs
        )
        net.compile(
            optimizer=make_optimizer(optimizer, **optimizer_args),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        if dist is not None:
            # What fit does before its first step: metric, loss and optimizer state are made
            # here, in the strategy's scope, not inside the replicated step.
            _compat.build_for_fit(net, (x, y))
    return net


def _learning_rate(learning_rate, schedule: str, epochs: int, examples: int, batch_size: int):
    """The constant rate, or a cosine decay to 0 over the steps of the run."""
    choice("schedule", schedule, Schedule)
    if schedule == "constant":
        return learning_rate
    steps = epochs * -(-examples // batch_size)
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))


def _fit_and_evaluate(net, data, **fit_args) -> tuple[dict, tuple[float, ...]]:
    """One device: ``fit``, then (train loss, train acc, test loss, test acc) by ``evaluate``."""
    (x_train, y_train), (x_test, y_test) = data
    history = _fit(net, x_train, y_train, **fit_args)
    train_metrics = net.evaluate(x_train, y_train, batch_size=EVAL_BATCH_SIZE, verbose=0)
    test_metrics = net.evaluate(x_test, y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return history, (*train_metrics, *test_metrics)


def _fit_and_evaluate_distributed(
    net, strategy, data, *, augment: bool, seed: int, **fit_args
) -> tuple[dict, tuple[float, ...]]:
    """``_fit_and_evaluate`` under ``strategy`` (see ``landscape._distribute``)."""
    from landscape._distribute import evaluate_distributed, fit_distributed

    (x_train, y_train), (x_test, y_test) = data
    augmenter = _augmenter(x_train.shape[-1], seed) if augment else None
    history = fit_distributed(
        net, strategy, x_train, y_train, seed=seed, augmenter=augmenter, **fit_args
    )
    train = evaluate_distributed(net, strategy, x_train, y_train, batch_size=EVAL_BATCH_SIZE)
    test = evaluate_distributed(net, strategy, x_test, y_test, batch_size=EVAL_BATCH_SIZE)
    return history, (*train, *test)


def _fit(net, x, y, *, epochs, batch_size, seed, augment, callbacks, verbose) -> dict:
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
