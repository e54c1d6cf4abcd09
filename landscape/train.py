"""Training recipes: the same model trained with SGD, SAM or ASAM (used by the CLI and the demo)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Literal

import keras
import numpy as np

from landscape.models import build_model
from sam import SAM

logger = logging.getLogger("landscape")

OptimizerName = Literal["sgd", "sam", "asam"]
OPTIMIZERS = ("sgd", "sam", "asam")


class CheckpointEvery(keras.callbacks.Callback):
    """Saves the weights before training and every ``every`` epochs, for trajectory plots.

    Files are ``{directory}/epoch_{epoch:04d}.weights.h5`` (epoch 0 = the initial weights);
    ``checkpoint_paths(directory)`` lists them in order.
    """

    def __init__(self, directory: str, *, every: int = 1):
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Argument `every` must be a positive int. Received: every={every}.")
        self.directory = directory
        self.every = every

    def _save(self, epoch: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self.model.save_weights(os.path.join(self.directory, f"epoch_{epoch:04d}.weights.h5"))

    def on_train_begin(self, logs=None):
        self._save(0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self._save(epoch + 1)


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoint files ``CheckpointEvery`` wrote in ``directory``, in epoch order."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5"))
    return [os.path.join(directory, n) for n in names]


def _augmented(x, y, batch_size: int, seed: int):
    """A shuffled tf.data pipeline with random shifts (and horizontal flips for colour images)."""
    import tensorflow as tf

    layers = [keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed)]
    if x.shape[-1] == 3:
        layers.insert(0, keras.layers.RandomFlip("horizontal", seed=seed))
    augment = keras.Sequential(layers)
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
    """

    model: keras.Model
    history: dict
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float


def make_optimizer(
    name: OptimizerName,
    *,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
    momentum: float = 0.9,
    weight_decay: float | None = None,
    rho: float | None = None,
) -> keras.optimizers.Optimizer:
    """SGD with momentum, wrapped in SAM (ρ default 0.05) or ASAM (ρ default 0.5) if asked."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
    base = keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return base
    if name == "sam":
        return SAM(base, rho=0.05 if rho is None else rho)
    return SAM(base, rho=0.5 if rho is None else rho, adaptive=True)


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
) -> TrainResult:
    """Train a zoo model on ``((x_train, y_train), (x_test, y_test))`` and evaluate it.

    The same ``seed`` gives the same initial weights and batch order for every optimizer, so an
    SGD run and a SAM run differ only in the optimizer.

    Args:
        data: ``((x_train, y_train), (x_test, y_test))`` as ``landscape.load_dataset`` returns.
        model: ``"mlp"``, ``"cnn"`` or ``"resnet"``. Defaults to "cnn".
        optimizer: ``"sgd"``, ``"sam"`` or ``"asam"``. Defaults to "sam".
        epochs: Defaults to 3.
        batch_size: Defaults to 128.
        learning_rate: SGD learning rate. Defaults to 0.01.
        momentum: SGD momentum. Defaults to 0.9.
        weight_decay: Decoupled weight decay of SGD, or None. Defaults to None.
        rho: SAM radius; None takes 0.05 for SAM and 0.5 for ASAM. Defaults to None.
        seed: Seeds Python, NumPy and TensorFlow. Defaults to 0.
        model_kwargs: Extra arguments of the model builder (e.g. ``{"depth": 14}``).
        callbacks: Keras callbacks for ``fit``.
        augment: Random shifts of the training images (and horizontal flips for colour
            images), applied in the input pipeline so the saved model has no augmentation
            layers. Defaults to False.
        schedule: ``"constant"`` learning rate or ``"cosine"`` decay to 0 over the run.
            Defaults to "constant".
        verbose: ``fit``'s verbosity. Defaults to "auto".

    Returns:
        A ``TrainResult``.
    """
    (x_train, y_train), (x_test, y_test) = data
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of ('constant', 'cosine').")
    lr = learning_rate
    if schedule == "cosine":
        steps = epochs * -(-len(x_train) // batch_size)
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    keras.utils.set_random_seed(seed)
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
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    logger.info("training %s with %s for %d epochs", model, optimizer, epochs)
    if augment:
        history = net.fit(
            _augmented(x_train, y_train, batch_size, seed),
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        history = net.fit(
            x_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    train_loss, train_acc = net.evaluate(x_train, y_train, batch_size=512, verbose=0)
    test_loss, test_acc = net.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return TrainResult(
        net, history.history, float(train_loss), float(train_acc), float(test_loss), float(test_acc)
    )
