"""The model zoo and the training recipe."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from landscape.models import build_model, resnet
from landscape.train import make_optimizer, train
from sam import SAM, SAMModel


@pytest.mark.parametrize(("depth", "convs"), [(8, 7 + 2), (14, 13 + 2)])
def test_resnet_depth_counts_layers(depth, convs):
    model = resnet((32, 32, 3), 10, depth=depth, width=4)
    n_conv = sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
    n_dense = sum(isinstance(layer, keras.layers.Dense) for layer in model.layers)
    assert n_conv == convs and n_dense == 1  # 6n+1 convs + 2 projections, 1 classifier
    assert isinstance(model, SAMModel)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("depth", [7, 10, "8"])
def test_resnet_refuses_bad_depth(depth):
    with pytest.raises(ValueError, match="`depth`"):
        resnet(depth=depth)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown model 'vgg'"):
        build_model("vgg", (28, 28, 1))
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        make_optimizer("adam")


def test_make_optimizer_modes():
    assert isinstance(make_optimizer("sgd"), keras.optimizers.SGD)
    sam = make_optimizer("sam", rho=0.1)
    asam = make_optimizer("asam")
    assert isinstance(sam, SAM) and sam.rho == 0.1 and not sam.adaptive
    assert asam.adaptive and asam.rho == 0.5


def test_train_is_reproducible_and_sgd_is_plain(mnist_small):
    (x, y), (xt, yt) = mnist_small
    data = ((x[:256], y[:256]), (xt[:64], yt[:64]))
    kwargs = {"model": "mlp", "epochs": 1, "batch_size": 64, "verbose": 0}
    a = train(data, optimizer="sgd", **kwargs)
    b = train(data, optimizer="sgd", **kwargs)
    c = train(data, optimizer="sam", **kwargs)
    assert not isinstance(a.model, SAMModel) and isinstance(c.model, SAMModel)
    for u, v in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.model.get_weights()[0], c.model.get_weights()[0])
    assert 0.0 <= a.test_acc <= 1.0 and np.isfinite(c.train_loss)
