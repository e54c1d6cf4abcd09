"""Surfaces: grid specs, closed-form 1D/2D surfaces, [iy, ix] indexing, determinism, one trace."""

import keras
import numpy as np
import pytest

import landscape
from landscape import executors
from landscape.surface import parse_grid


@pytest.fixture
def quadratic():
    """A float64 linear least-squares model: its loss is a quadratic in the weights."""
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(29, 3)), rng.normal(size=(29, 1))
    inp = keras.Input((3,), dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(1, dtype="float64", name="lin")(inp))
    model.layers[-1].kernel.assign(rng.normal(size=(3, 1)))
    model.layers[-1].bias.assign([0.3])
    obj = landscape.Objective(model, (x, y), "mse", batch_size=8, metrics=())
    yield model, x, y, obj
    keras.config.set_floatx("float32")


def _closed_form(model, x, y, d, a):
    """mean((x (W + Σ a d_W) + b + Σ a d_b − y)²), computed with numpy."""
    kernel, bias = model.layers[-1].kernel, model.layers[-1].bias
    w = keras.ops.convert_to_numpy(kernel.value) + sum(
        c * e.arrays[kernel.path] for c, e in zip(a, d)
    )
    b = keras.ops.convert_to_numpy(bias.value) + sum(c * e.arrays[bias.path] for c, e in zip(a, d))
    return np.mean((x @ w + b - y) ** 2)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("-1:1:5", np.linspace(-1, 1, 5)),
        ((-0.5, 2, 6), np.linspace(-0.5, 2, 6)),
        ("0:0:1", np.array([0.0])),
        (" -2 : 2 : 3 ", np.array([-2.0, 0.0, 2.0])),
    ],
)
def test_parse_grid(spec, expected):
    np.testing.assert_array_equal(parse_grid(spec), expected)


@pytest.mark.parametrize(
    "spec", ["-1:1", "a:1:3", "1:-1:5", "-1:1:0", "-1:1:2.5", "-1:1:1", (0, 1), "0:inf:3", None]
)
def test_parse_grid_errors_name_the_argument(spec):
    with pytest.raises(ValueError, match=r"Argument `y` .*Received: y="):
        parse_grid(spec, name="y")


def test_1d_surface_is_closed_form(quadratic):
    model, x, y, obj = quadratic
    d = landscape.random_direction(model, seed=0, ignore="none")
    surf = landscape.compute_surface(obj, [d], x="-1:1:7", verbose=0)
    assert surf.ndim == 1 and surf.shape == (7,) and surf.complete
    assert list(surf.values) == ["train_loss"]
    want = [_closed_form(model, x, y, [d], [a]) for a in surf.x]
    np.testing.assert_allclose(surf["train_loss"], want, rtol=1e-12)


def test_2d_non_square_surface_is_closed_form_and_indexed_iy_ix(quadratic):
    model, x, y, obj = quadratic
    d1 = landscape.random_direction(model, seed=0, ignore="none")
    d2 = landscape.random_direction(model, seed=1, ignore="none", orthogonal_to=d1)
    surf = landscape.compute_surface(obj, [d1, d2], x="-1:1:5", y=(-0.5, 0.5, 3), verbose=0)
    assert surf.shape == (3, 5) and surf["train_loss"].shape == (3, 5)
    for iy, b in enumerate(surf.y):
        for ix, a in enumerate(surf.x):
            want = _closed_form(model, x, y, [d1, d2], [a, b])
            assert surf["train_loss"][iy, ix] == pytest.approx(want, rel=1e-12)
    assert obj.trace_count == {"train": 1}


def test_same_seed_same_surface_and_train_test_metrics():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)

    def run():
        keras.backend.clear_session()
        inp = keras.Input((4,))
        h = keras.layers.Dense(5, activation="relu", name="h")(inp)
        model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
        for v in model.variables:
            v.assign(np.random.default_rng(3).normal(size=tuple(v.shape)).astype("float32"))
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        obj = landscape.Objective(model, (x, y), test_data=(x[:9], y[:9]), batch_size=16)
        dirs = [landscape.random_direction(model, seed=s) for s in (10, 11)]
        return landscape.compute_surface(obj, dirs, x="-1:1:3", y="-1:1:4", verbose=0)

    a, b = run(), run()
    assert sorted(a.values) == ["test_acc", "test_loss", "train_acc", "train_loss"]
    for k in a.values:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == (4, 3) and a.complete
    assert np.all((a["train_acc"] >= 0) & (a["train_acc"] <= 1))


def test_direction_count_and_argument_errors(quadratic):
    model, _, _, obj = quadratic
    d = landscape.random_direction(model, seed=0)
    with pytest.raises(ValueError, match="1D surface .* exactly 1 direction"):
        landscape.compute_surface(obj, [d, d], x="-1:1:3")
    with pytest.raises(ValueError, match="2D surface .* exactly 2 directions"):
        landscape.compute_surface(obj, [d], x="-1:1:3", y="-1:1:3")
    with pytest.raises(ValueError, match="Argument `x`"):
        landscape.compute_surface(obj, [d], x="-1:1")
    with pytest.raises(ValueError, match="Argument `verbose`"):
        landscape.compute_surface(obj, [d], x="-1:1:3", verbose="loud")


def test_progbar_when_verbose(quadratic, capsys):
    model, _, _, obj = quadratic
    d = landscape.random_direction(model, seed=0)
    surf = landscape.compute_surface(obj, [d], x="-1:1:3", verbose=1)
    assert surf.complete
    assert "3/3" in capsys.readouterr().out


def test_evaluate_points_is_the_evaluator_of_compute_surface(quadratic):
    model, _, _, obj = quadratic
    d1 = landscape.random_direction(model, seed=0, ignore="none")
    d2 = landscape.random_direction(model, seed=1, ignore="none")
    surf = landscape.compute_surface(obj, [d1, d2], x="-1:1:3", y="-1:1:2", verbose=0)
    points = [[a, b] for b in surf.y for a in surf.x]  # [iy, ix] order
    rows = np.asarray(list(executors.evaluate_points(obj, [d1, d2], points)))
    assert rows.shape == (6, 1) and rows.dtype == np.float64
    np.testing.assert_array_equal(rows[:, 0], surf["train_loss"].ravel())
    again = executors.evaluate_points(obj, obj.basis([d1, d2]), points[:2], splits=("train",))
    np.testing.assert_array_equal(np.asarray(list(again)), rows[:2])


def test_recipe_keyword_builds_the_objective(quadratic):
    model, _, _, obj = quadratic
    d = landscape.random_direction(model, seed=0, ignore="none")
    calls = []

    def recipe():
        calls.append(1)
        return obj

    direct = landscape.compute_surface(obj, [d], x="-1:1:5", verbose=0)
    built = landscape.compute_surface(directions=[d], x="-1:1:5", recipe=recipe, verbose=0)
    np.testing.assert_array_equal(built["train_loss"], direct["train_loss"])
    assert len(calls) == 1
    given = landscape.compute_surface(obj, [d], x="-1:1:5", recipe=recipe, verbose=0)
    np.testing.assert_array_equal(given["train_loss"], direct["train_loss"])
    assert len(calls) == 1  # an objective given is used as is
    old_form = landscape.compute_surface(recipe, [d], x="-1:1:5", verbose=0)
    np.testing.assert_array_equal(old_form["train_loss"], direct["train_loss"])


def test_recipe_keyword_errors(quadratic):
    model, _, _, obj = quadratic
    d = landscape.random_direction(model, seed=0)
    with pytest.raises(ValueError, match="Argument `recipe` must be an ObjectiveRecipe"):
        landscape.compute_surface(obj, [d], x="-1:1:3", recipe="model.keras")
    with pytest.raises(ValueError, match="needs an `objective` or a `recipe`"):
        landscape.compute_surface(directions=[d], x="-1:1:3")
    with pytest.raises(ValueError, match=r"Argument `objective` must be an Objective \(or None"):
        landscape.compute_surface(lambda: obj, [d], x="-1:1:3", recipe=lambda: obj)
    with pytest.raises(ValueError, match="returned int"):
        landscape.compute_surface(directions=[d], x="-1:1:3", recipe=lambda: 3)


def test_precision_is_recorded_and_a_resume_in_another_precision_refused(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    obj = landscape.Objective(model, (x, y), "mse", batch_size=8, metrics=())
    d = [landscape.random_direction(model, seed=1, ignore=None)]
    path = str(tmp_path / "line.h5")
    surface = landscape.compute_surface(obj, d, x="-1:1:3", path=path, verbose=0)
    assert obj.precision == "float32" and surface.metadata["precision"] == "float32"
    before = (tmp_path / "line.h5").read_bytes()
    with pytest.raises(ValueError, match=r"precision differs \(file float32, run float64\)"):
        landscape.compute_surface(obj.with_precision("float64"), d, x="-1:1:3", path=path)
    assert (tmp_path / "line.h5").read_bytes() == before


def test_a_float64_model_is_measured_in_float64_and_never_narrower(quadratic):
    _, _, _, obj = quadratic  # a float64 model built under the float32 global policy
    assert obj.precision == "float64"
    with pytest.raises(ValueError, match="must not be narrower.*compute in float64"):
        obj.with_precision("float32")
