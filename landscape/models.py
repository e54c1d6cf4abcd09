"""A small model zoo: an MLP, a plain CNN and a CIFAR-style ResNet with BatchNorm.

Every builder returns an uncompiled ``SAMModel`` (a ``keras.Model`` whose ``fit`` does SAM steps
when compiled with a ``SAM`` optimizer or a plain one, see ``sam.SAMModel``), or a plain
``keras.Model`` with ``sam_model=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from landscape._checks import ModelName, choice
from sam import SAMModel

# PyTorch's BatchNorm momentum (0.1, i.e. 0.9 in Keras's convention): with Keras's 0.99 the moving
# statistics lag far behind on the short runs this zoo is for, and inference-mode losses (what
# every landscape measures) are then those of a different network.
BN_MOMENTUM = 0.9


def _finish(inputs, outputs, name, sam_model):
    cls = SAMModel if sam_model else keras.Model
    return cls(inputs, outputs, name=name)


def mlp(
    input_shape: Sequence[int],
    num_classes: int = 10,
    *,
    hidden: Sequence[int] = (128, 64),
    sam_model: bool = True,
) -> keras.Model:
    """Flatten → Dense-ReLU layers → softmax.

    Args:
        input_shape: Shape of one example, e.g. ``(28, 28, 1)``.
        num_classes: Number of classes. Defaults to 10.
        hidden: Widths of the hidden layers. Defaults to ``(128, 64)``.
        sam_model: Return a ``SAMModel`` (else a plain ``keras.Model``). Defaults to True.
    """
    inputs = keras.Input(tuple(input_shape))
    h = keras.layers.Flatten()(inputs)
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation="relu", name=f"dense_{i}")(h)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(h)
    return _finish(inputs, outputs, "mlp", sam_model)


def cnn(
    input_shape: Sequence[int],
    num_classes: int = 10,
    *,
    filters: Sequence[int] = (16, 32),
    batch_norm: bool = True,
    sam_model: bool = True,
) -> keras.Model:
    """Conv(3x3)-BN-ReLU-MaxPool stages → flatten → softmax.

    Args:
        input_shape: Shape of one image, e.g. ``(28, 28, 1)``.
        num_classes: Number of classes. Defaults to 10.
        filters: Filters of each stage. Defaults to ``(16, 32)``.
        batch_norm: Put BatchNormalization after each convolution. Defaults to True.
        sam_model: Return a ``SAMModel`` (else a plain ``keras.Model``). Defaults to True.
    """
    inputs = keras.Input(tuple(input_shape))
    h = inputs
    for i, f in enumerate(filters):
        h = keras.layers.Conv2D(f, 3, padding="same", use_bias=not batch_norm, name=f"conv_{i}")(h)
        if batch_norm:
            h = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn_{i}")(h)
        h = keras.layers.Activation("relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(h)
    return _finish(inputs, outputs, "cnn", sam_model)


def _conv_bn(h, filters, strides, name):
    h = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(h)
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(h)


def resnet(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    *,
    depth: int = 8,
    width: int = 16,
    sam_model: bool = True,
) -> keras.Model:
    """A CIFAR-style ResNet (He et al. 2016, section 4.2) with BatchNorm: depth = 6n + 2.

    Three stages of n basic blocks with ``width``, 2·``width`` and 4·``width`` filters, the
    second and third starting with stride 2 and a 1x1 projection shortcut.

    Args:
        input_shape: Shape of one image. Defaults to ``(32, 32, 3)``.
        num_classes: Number of classes. Defaults to 10.
        depth: 6n + 2 layers: 8, 14, 20, 32, 56 ... Defaults to 8.
        width: Filters of the first stage. Defaults to 16.
        sam_model: Return a ``SAMModel`` (else a plain ``keras.Model``). Defaults to True.

    Raises:
        ValueError: ``depth`` is not of the form 6n + 2 or ``width`` < 1.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"Argument `depth` must be 6n + 2 (8, 14, 20, ...). Received: {depth=}.")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"Argument `width` must be a positive integer. Received: {width=}.")
    blocks = (depth - 2) // 6
    inputs = keras.Input(tuple(input_shape))
    h = keras.layers.Activation("relu")(_conv_bn(inputs, width, 1, "stem"))
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks):
            name = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = h
            h = keras.layers.Activation("relu")(_conv_bn(h, filters, strides, f"{name}_a"))
            h = _conv_bn(h, filters, 1, f"{name}_b")
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
                )(shortcut)
                shortcut = keras.layers.BatchNormalization(
                    momentum=BN_MOMENTUM, name=f"{name}_proj_bn"
                )(shortcut)
            h = keras.layers.Activation("relu")(keras.layers.Add()([h, shortcut]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(h)
    return _finish(inputs, outputs, f"resnet{depth}", sam_model)


def build_model(name: ModelName, input_shape, num_classes: int = 10, **kwargs) -> keras.Model:
    """Build a zoo model by name: ``"mlp"``, ``"cnn"`` or ``"resnet"``."""
    builders = {"mlp": mlp, "cnn": cnn, "resnet": resnet}
    choice("model", name, ModelName)
    return builders[name](input_shape, num_classes, **kwargs)
