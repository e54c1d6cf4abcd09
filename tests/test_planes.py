"""Planes: Hessian-eigenvector directions against a dense Hessian; the plane through three models
reproduces each model's loss (model.evaluate) at its coordinates; the CLI paths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import landscape
from landscape import planes
from landscape.cli import main


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    yield


def _regression(seed=0):
    """y = X w with MSE: H = (2 / n) XᵀX exactly (a quadratic: the surface is too)."""
    rng = np.random.default_rng(seed)
    n, p = 30, 5
    x = rng.normal(size=(n, p)) * np.array([0.5, 1.0, 1.5, 2.0, 3.0])
    y = rng.normal(size=(n, 1))
    inp = keras.Input((p,), dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, name="lin")(inp))
    obj = landscape.Objective(model, (x, y), "mse", batch_size=8, metrics=())
    return obj, 2.0 / n * x.T @ x


def _vector(d):
    return np.concatenate([a.ravel() for a in d.arrays.values()])


@pytest.mark.parametrize("pair", ["top2", "top-bottom"])
def test_eigenvector_directions_are_the_dense_hessians_orthonormal_eigenvectors(float64, pair):
    obj, h = _regression()
    values, vectors = np.linalg.eigh(h)
    d1, d2 = landscape.eigenvector_directions(obj, pair, seed=0)
    want = [-1, -2] if pair == "top2" else [-1, 0]
    for d, j in zip((d1, d2), want):
        assert list(d.arrays) == obj.trainable_variables.paths == ["lin/kernel"]
        assert d.metadata["eigenvalue"] == pytest.approx(values[j], rel=1e-8)
        assert d.metadata["residual"] <= 1e-4 and d.metadata["converged"]
        assert abs(_vector(d) @ vectors[:, j]) == pytest.approx(1.0, abs=1e-8)
    assert d1.norm() == pytest.approx(1.0, abs=1e-12) == d2.norm()
    assert abs(d1.dot(d2)) < 1e-12
    assert d2.metadata["overlap"] == pytest.approx(0.0, abs=1e-6)
    assert d1.metadata["pair"] == pair and d2.metadata["which"] == (
        "largest" if pair == "top2" else "smallest"
    )
    # As surface directions: L(w0 + a d) + L(w0 - a d) - 2 L(w0) = λ a² on a quadratic.
    surf = landscape.compute_surface(obj, [d1, d2], x="-0.5:0.5:3", y="-0.5:0.5:3", verbose=0)
    z = surf.values["train_loss"]
    assert z[1, 0] + z[1, 2] - 2 * z[1, 1] == pytest.approx(values[want[0]] * 0.25, rel=1e-8)
    assert z[0, 1] + z[2, 1] - 2 * z[1, 1] == pytest.approx(values[want[1]] * 0.25, rel=1e-8)
    assert z[1, 1] == pytest.approx(obj.evaluate()["loss"], rel=1e-12)


def test_eigenvector_directions_from_results_use_no_new_products(float64):
    obj, h = _regression()
    top = landscape.hessian_eigenvalues(obj, k=2, seed=1)
    bottom = landscape.hessian_eigenvalues(obj, which="smallest", seed=1)
    d1, d2 = landscape.eigenvector_directions(top)
    assert d1.metadata["eigenvalue"] == top.values[0] and d2.metadata["eigenvalue"] == top.values[1]
    e1, e2 = landscape.eigenvector_directions([bottom, top], "top-bottom")
    assert e1.metadata["which"] == "largest" and e2.metadata["which"] == "smallest"
    assert e2.metadata["eigenvalue"] == pytest.approx(np.linalg.eigvalsh(h)[0], rel=1e-8)
    with pytest.raises(ValueError, match="`pair='top2'` needs an EigenResult"):
        landscape.eigenvector_directions(bottom)
    with pytest.raises(ValueError, match="`pair='top-bottom'` needs two EigenResults"):
        landscape.eigenvector_directions(top, "top-bottom")
    with pytest.raises(ValueError, match="Unknown pair 'top3'"):
        landscape.eigenvector_directions(top, "top3")
    with pytest.raises(ValueError, match="Argument `source` must be an Objective"):
        landscape.eigenvector_directions(obj.model)


def _model(seed, *, bn=True):
    """A tiny CNN with BatchNorm whose weights and moving statistics depend on ``seed``."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, activation="relu")(inp)
    if bn:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    rng = np.random.default_rng(seed)
    for v in model.non_trainable_variables:  # moving mean and variance (> 0) differ by model
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    return model


def _data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(48, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 48)


def test_the_plane_through_three_models_reproduces_each_models_loss():
    models = [_model(s) for s in (0, 1, 2)]
    x, y = _data()
    plane = landscape.plane_through(*models)
    origin, d1, d2 = plane
    obj = landscape.Objective(models[0], (x, y), batch_size=16)
    plane.check(obj)
    assert list(d1.arrays) == list(origin.arrays) == obj.variables.paths  # BN statistics too
    assert abs(d1.dot(d2)) < 1e-6 * d1.norm() ** 2 and d2.norm() == pytest.approx(d1.norm())
    c = plane.coordinates
    assert c.shape == (3, 2) and tuple(c[0]) == (0.0, 0.0)
    assert c[1] == pytest.approx([1.0, 0.0], abs=1e-6) and c[2, 1] > 0
    assert np.all(plane.distances < 1e-5 * np.linalg.norm(_vector(origin)))
    assert d1.metadata["coordinates"] == c.tolist()
    for model, (a, b) in zip(models, c):
        surf = landscape.compute_surface(obj, [d1, d2], x=(a, a, 1), y=(b, b, 1), verbose=0)
        want = model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
        assert surf.values["train_loss"][0, 0] == pytest.approx(want["loss"], rel=2e-6)
        assert surf.values["train_acc"][0, 0] == pytest.approx(want["accuracy"], abs=1e-12)
    (x0, x1, nx), (y0, y1, ny) = plane.grid(margin=0.25, num=5)
    assert x0 == pytest.approx(min(c[:, 0]) - 0.25) and y1 == pytest.approx(c[2, 1] + 0.25)
    assert nx == ny == 5
    with pytest.raises(ValueError, match="Objective of the plane's first model m0"):
        plane.check(landscape.Objective(models[1], (x, y)))


def test_planes_that_do_not_exist_are_refused():
    m0, m1 = _model(0), _model(1)
    with pytest.raises(ValueError, match="`m1` must have other weights than `m0`"):
        landscape.plane_through(m0, m0, m1)
    line = keras.models.clone_model(m0)  # w0 + 2 (w1 - w0): on the line through m0 and m1
    line.set_weights([2 * b - a for a, b in zip(m0.get_weights(), m1.get_weights())])
    with pytest.raises(ValueError, match="`m2` must not lie on the line"):
        landscape.plane_through(m0, m1, line)
    with pytest.raises(ValueError, match="must have the same variables and shapes"):
        landscape.plane_through(m0, m1, _model(2, bn=False))


def test_cli_choices_are_the_library_pairs():
    (param,) = [p for p in main.commands["surface"].params if p.name == "eigen_pair"]
    assert tuple(param.type.choices) == planes.EIGEN_PAIRS


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Three tiny MLPs for the embedded MNIST data, saved."""
    d = tmp_path_factory.mktemp("planes")
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((28, 28, 1))
        h = keras.layers.Dense(4, activation="relu")(keras.layers.Flatten()(inp))
        model = keras.Model(inp, keras.layers.Dense(10)(h))
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.save(d / f"m{seed}.keras")
    return d


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_surface_plane_and_eigen(saved_models):
    d = saved_models
    common = ["--samples", 64, "--test-samples", 0, "-q"]
    out = d / "plane.h5"
    result = invoke("surface", d / "m0.keras", "--plane", d / "m1.keras", d / "m2.keras",
                    "--x=0:1:2", "--y=0:0.5:2", "--out", out, *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    surf = landscape.Surface.load(out)
    assert surf.shape == (2, 2) and surf.complete
    assert surf.metadata["directions_metadata"][0]["kind"] == "plane"
    out = d / "eigen.h5"
    result = invoke("surface", d / "m0.keras", "--directions", "eigen", "--eigen-pair",
                    "top-bottom", "--x=-0.1:0.1:3", "--out", out, *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = landscape.Surface.load(out).metadata["directions_metadata"]
    assert len(meta) == 1 and meta[0]["kind"] == "hessian_eigenvector"
    result = invoke("surface", d / "m0.keras", "--plane", d / "m1.keras", d / "m2.keras",
                    "--directions", "eigen", *common)  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --model2, --plane and --directions eigen each choose the directions; give one "
        "of them."
    )
