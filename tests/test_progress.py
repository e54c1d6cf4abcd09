"""Progress bars: honest targets, values shown as given (never averaged), none undefined."""

import math

import keras
import numpy as np
import pytest
from test_hessian import Quadratic, _output  # ½ wᵀAw with a known Hessian A

import landscape
from landscape import _progress
from landscape.surface import _Store


class Recorder(keras.utils.Progbar):
    """A Progbar that keeps its first target and every update it is given."""

    made: list["Recorder"] = []

    def __init__(self, target, **kwargs):
        super().__init__(target, **kwargs)
        self.first_target = target
        self.updates: list[tuple[int, dict, bool | None]] = []
        Recorder.made.append(self)

    def update(self, current, values=None, finalize=None):
        self.updates.append((current, dict(values or []), finalize))
        super().update(current, values, finalize)

    def shown(self, name):
        return [values[name] for _, values, _ in self.updates if name in values]

    def finalized(self):
        return [u for u in self.updates if u[2] or (u[2] is None and u[0] >= (self.target or 0))]


@pytest.fixture
def bars(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(keras.utils, "Progbar", Recorder)
    return Recorder.made


def _all_finite(bar):
    return all(math.isfinite(v) for _, values, _ in bar.updates for v in values.values())


# ------------------------------------------------------------------------------ the helper
def test_values_are_shown_as_given_not_averaged(capsys):
    bar = _progress.progbar(None, 1, "probe")
    bar.update(1, [("estimate", 1.0)])
    bar.update(2, [("estimate", 3.0)])
    _progress.finish(bar, 2, [("estimate", 3.0)])
    out = capsys.readouterr().out
    assert "2/2" in out and "estimate: 3.0000" in out and "2.0000" not in out  # not the mean
    assert _progress.progbar(10, 0) is None
    _progress.finish(None, 3)  # a silent run has nothing to close


def test_an_open_bar_prints_its_line_with_verbose_2(capsys):
    bar = _progress.progbar(None, 2, "step")
    for i in range(3):
        bar.update(i + 1, [("residual", 0.5 / (i + 1))], finalize=False)
    assert capsys.readouterr().out == ""  # verbose=2 prints only the last line
    _progress.finish(bar, 3, [("residual", 0.5 / 3)])
    out = capsys.readouterr().out
    assert out.startswith("3/3") and "residual: 0.1667" in out and out.count("\n") == 1


# ------------------------------------------------------------------------- Hessian bars
# rel_err is compared with tol from the TRACE_MIN_SAMPLES-th probe on (index - 1, minus the
# first probe, which shows no rel_err)
TRACE_CHECKED = landscape.hessian.TRACE_MIN_SAMPLES - 2


@pytest.fixture
def hessian_objective():
    """½ wᵀAw: H = A, a diagonal-dominant matrix (Hutchinson's variance small but not 0)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    rng = np.random.default_rng(0)
    off = rng.normal(size=(5, 5)) * 0.1
    a = np.diag([5.0, 4.0, 3.0, 2.0, 1.0]) + off + off.T
    keras.utils.set_random_seed(0)
    inp = keras.Input((1,), dtype="float64")
    model = keras.Model(inp, Quadratic(a)(inp))
    data = (np.zeros((4, 1)), np.zeros((4, 1)))
    return a, landscape.Objective(model, data, _output, batch_size=2, metrics=())


def test_trace_bar_aims_at_the_cap_and_never_shows_an_undefined_stderr(
    hessian_objective, bars, capsys
):
    a, obj = hessian_objective
    result = landscape.hessian_trace(obj, tol=0.05, seed=0, verbose=1, method="hutchinson")
    (bar,) = bars
    assert result.converged and result.samples < landscape.hessian.TRACE_SAMPLES
    assert bar.first_target == landscape.hessian.TRACE_SAMPLES  # the cap: a known total
    assert "stderr" not in bar.updates[0][1]  # one probe: no standard error yet
    assert all("stderr" in values for _, values, _ in bar.updates[1:-1])  # [-1]: finish
    assert _all_finite(bar)
    assert [u[0] for u in bar.updates] == [*range(1, result.samples + 1), result.samples]
    assert len(bar.finalized()) == 1 and bar.updates[-1][0] == result.samples
    assert bar.shown("trace")[-1] == result.estimate and bar.shown("stderr")[-1] == result.stderr
    # the quantity the run stops on, against tol: above it before the last probe, not after
    rel = bar.shown("rel_err")
    assert rel[-1] == pytest.approx(result.stderr / abs(result.estimate), rel=1e-12)
    assert rel[-1] <= 0.05 and all(r > 0.05 for r in rel[TRACE_CHECKED:-1])
    out = capsys.readouterr().out
    assert "inf" not in out and "nan" not in out
    assert f"{result.samples}/{landscape.hessian.TRACE_SAMPLES}" in out  # stopped short

    bars.clear()
    short = landscape.hessian_trace(obj, samples=4, seed=0, verbose=1)
    assert bars[0].first_target == 4 == short.samples  # a cap it cannot stop before: known
    assert len(bars[0].finalized()) == 1 and _all_finite(bars[0])


@pytest.mark.parametrize("method", ["lanczos", "power", "arpack"])
def test_eigenvalue_bars_aim_at_the_true_cap_and_count_products(hessian_objective, bars, method):
    a, obj = hessian_objective
    k, max_iter = 2, 50
    result = landscape.hessian_eigenvalues(
        obj, k=k, method=method, tol=1e-6, max_iter=max_iter, seed=0, verbose=1
    )
    (bar,) = bars
    cap = {"lanczos": min(max_iter, 5), "power": k * max_iter, "arpack": None}[method]
    assert bar.first_target == cap
    products = result.n_hvp - k  # the rest are the fresh residual checks
    assert bar.updates[-1][0] == products and len(bar.finalized()) == 1
    counts = [u[0] for u in bar.updates[:-1]]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert _all_finite(bar)
    if method == "lanczos":  # the quantity compared with tol, and the leading Ritz value
        assert bar.shown("residual")[-1] <= 1e-6
        assert bar.shown("lambda")[-1] == pytest.approx(result.values[0], rel=1e-9)
    if method == "power":  # λ's relative change, from each eigenvalue's second iteration on
        changes = bar.shown("change")
        assert len(changes) == products - k and changes[-1] < 1e-6
        assert bar.shown("lambda")[-1] == pytest.approx(result.values[-1], rel=1e-9)


def test_spectrum_bar_shows_the_largest_node_so_far(hessian_objective, bars):
    a, obj = hessian_objective
    result = landscape.hessian_spectrum(obj, steps=3, runs=4, seed=0, verbose=1)
    (bar,) = bars
    assert bar.first_target == 4 and len(bar.finalized()) == 1
    shown = bar.shown("lambda_max")
    np.testing.assert_array_equal(shown, np.maximum.accumulate(result.nodes.max(axis=1)))
    assert shown[-1] <= np.linalg.eigvalsh(a).max() + 1e-9  # Ritz values: a lower bound
    # each run's quadrature of vᵀHv (exact: 3 steps reach degree 5 ≥ 1) with its start vector
    rng = np.random.default_rng(0)
    probes = [(z := rng.choice(np.array([-1.0, 1.0]), size=5)) @ a @ z for _ in range(4)]
    np.testing.assert_allclose(bar.shown("trace"), np.cumsum(probes) / np.arange(1, 5), rtol=1e-9)
    stderr = [np.std(probes[: r + 1], ddof=1) / np.sqrt(r + 1) for r in range(1, 4)]
    np.testing.assert_allclose(bar.shown("stderr"), stderr, rtol=1e-9)


# ------------------------------------------------------------------------- surface bar
@pytest.fixture
def regression():
    """A float64 linear least-squares model with a train and a test split."""
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(29, 3)), rng.normal(size=(29, 1))
    inp = keras.Input((3,), dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(1, dtype="float64", name="lin")(inp))
    obj = landscape.Objective(
        model, (x, y), "mse", batch_size=8, metrics=(), test_data=(x[:9], y[:9] + 1)
    )
    return model, obj


def test_surface_bar_shows_the_lowest_loss_so_far(regression, bars, capsys):
    model, obj = regression
    d = landscape.random_direction(model, seed=0, ignore="none")
    surf = landscape.compute_surface(obj, [d], x="-2:2:9", verbose=1)
    (bar,) = bars
    assert bar.first_target == 9 and len(bar.finalized()) == 1
    assert all(set(values) == {"min_train_loss", "min_test_loss"} for _, values, _ in bar.updates)
    for split in ("train", "test"):
        expected = np.minimum.accumulate(surf[f"{split}_loss"])
        np.testing.assert_array_equal(bar.shown(f"min_{split}_loss"), expected)
        assert expected[-1] < expected[0]  # the grid's lowest point, not the last one's value
    out = capsys.readouterr().out
    assert "9/9" in out and "min_train_loss" in out and "inf" not in out


def test_surface_bar_leaves_out_non_finite_losses_and_counts_a_resumed_file(bars):
    names = ("train_loss", "train_acc")
    values = {n: np.full(5, np.nan) for n in names}
    computed = np.zeros(5, bool)
    values["train_loss"][4], values["train_acc"][4], computed[4] = 0.7, 0.5, True  # resumed
    bar = _progress.progbar(4, 1, "point")
    rows = [((0,), [np.nan, 0.1]), ((1,), [np.inf, 0.1]), ((2,), [0.9, 0.2]), ((3,), [0.3, 0.8])]
    _Store(None, names, values, computed, 2.0, bar).consume(iter(rows))
    assert [u[1] for u in bar.updates] == [
        {"min_train_loss": 0.7},  # the file's point: a NaN loss is no minimum
        {"min_train_loss": 0.7},  # nor is inf
        {"min_train_loss": 0.7},
        {"min_train_loss": 0.3},
    ]
    bars.clear()
    fresh = {n: np.full(2, np.nan) for n in names}
    bar = _progress.progbar(2, 1, "point")
    _Store(None, names, fresh, np.zeros(2, bool), 2.0, bar).consume(
        iter([((0,), [np.nan, 0.0]), ((1,), [0.4, 1.0])])
    )
    assert [u[1] for u in bar.updates] == [{}, {"min_train_loss": 0.4}]  # shown once defined


# ------------------------------------------------------------------------- sharpness bars
def test_worst_case_bar_knows_its_steps_and_ends_once(regression, bars):
    model, obj = regression
    result = landscape.worst_case_sharpness(obj, 0.1, steps=6, seed=0, verbose=1)
    (bar,) = bars
    assert bar.first_target == 6 and [u[0] for u in bar.updates] == list(range(1, 7))
    assert len(bar.finalized()) == 1 and _all_finite(bar)
    shown = bar.shown("max_increase")
    assert shown == sorted(shown) and shown[-1] <= result.value + 1e-12  # the best so far
    bars.clear()  # over batches from an iterator: open, closed at steps x batches
    landscape.worst_case_sharpness(obj, 0.1, steps=3, batch_size=10, seed=0, verbose=1)
    (bar,) = bars
    assert bar.first_target is None and bar.target == 3 * 3  # 29 examples in batches of 10
    # open until finish, which closes it once at steps x batches
    assert [u[2] for u in bar.updates] == [None] * 9 + [True] and bar.updates[-1][0] == 9
