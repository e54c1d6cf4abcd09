"""Per-block curvature and the generalized Gauss-Newton matrix, against dense matrices (float64).

Blocks: on a model whose Hessian is block-diagonal by construction (two independent towers whose
squared errors add), each block's eigenvalues are the dense block's; on an ordinary model a
restricted run gives the eigenvalues of the corresponding diagonal block of the dense Hessian.
GGN: G v against Jᵀ H_ℓ J built with ``tape.jacobian`` (mean squared error, cross-entropy on
logits, cross-entropy on softmax outputs taken at the logits), with sample weights.
"""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_hessian import _dense_hessian, _tiny_mlp  # noqa: E402

import landscape  # noqa: E402
from landscape import hessian  # noqa: E402

RTOL = 1e-6


@pytest.fixture
def float64():
    """Layers made in the test compute and store in float64 (conftest resets afterwards)."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")


# ---------------------------------------------------------------------------- dense helpers
def _theta(model):
    """The trainable weights as one tf.Variable, and the model's outputs as a function of it."""
    trainable = model.trainable_variables
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(s)) for s in shapes]
    theta = tf.Variable(np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in trainable]))
    fixed = [v.value for v in model.non_trainable_variables]

    def outputs(t, x):
        weights = [tf.reshape(p, s) for p, s in zip(tf.split(t, sizes), shapes)]
        out, _ = model.stateless_call(weights, fixed, x, training=False)
        return out

    return theta, outputs


def _dense_loss_hessian(model, x, loss_of_outputs):
    """The Hessian of ``loss_of_outputs(f(x; θ))`` w.r.t. θ, by tape.jacobian of the gradient."""
    theta, outputs = _theta(model)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_of_outputs(outputs(theta, x))
        grad = inner.gradient(loss, theta)
    return outer.jacobian(grad, theta).numpy()


def _dense_ggn(model, x, loss_of_outputs, outputs_of=None):
    """Jᵀ H_ℓ J: J = ∂f/∂θ and H_ℓ = ∂²ℓ/∂f² both by tape.jacobian (f = ``outputs_of``'s
    model's outputs, e.g. the logits of a softmax model)."""
    theta, outputs = _theta(outputs_of or model)
    with tf.GradientTape() as tape:
        f = outputs(theta, x)
    jac = tape.jacobian(f, theta).numpy().reshape(-1, theta.shape[0])
    z = tf.Variable(f)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_of_outputs(z)
        g = inner.gradient(loss, z)
    h = outer.jacobian(g, z).numpy().reshape(jac.shape[0], jac.shape[0])
    return jac.T @ h @ jac


def _operator_matrix(obj, curvature="ggn"):
    """The objective's G (or H) column by column from its products."""
    n = obj.flat.n
    product = obj.gauss_newton_vector_product if curvature == "ggn" else obj.hessian_vector_product
    return np.stack([obj.flat.concat(product(obj.flat.split(e))) for e in np.eye(n)], axis=1)


def _top(matrix, k):
    return np.sort(np.linalg.eigvalsh(matrix))[::-1][:k]


# --------------------------------------------------------------------- block-diagonal model
def _two_towers():
    """Two towers on separate inputs; MSE on their concatenated outputs is a sum of two
    independent losses, so H is block-diagonal between the towers' weights."""
    keras.utils.set_random_seed(3)
    xa, xb = keras.Input((2,), name="xa"), keras.Input((3,), name="xb")
    a = keras.layers.Dense(3, activation="tanh", name="a_hidden")(xa)
    a = keras.layers.Dense(1, name="a_out")(a)
    b = keras.layers.Dense(3, activation="tanh", name="b_hidden")(xb)
    b = keras.layers.Dense(1, name="b_out")(b)
    model = keras.Model([xa, xb], keras.layers.Concatenate()([a, b]))
    rng = np.random.default_rng(4)
    x = [rng.normal(size=(19, 2)), rng.normal(size=(19, 3))]
    y = rng.normal(size=(19, 2))
    return model, x, y


def test_each_block_of_a_block_diagonal_hessian_has_the_dense_blocks_eigenvalues(float64):
    model, x, y = _two_towers()
    obj = landscape.Objective(model, (x, y), "mse", batch_size=7, metrics=())
    h = _dense_loss_hessian(model, x, lambda f: tf.reduce_mean((f - y) ** 2))
    paths = obj.trainable_variables.paths
    in_a = np.concatenate(
        [np.full(int(np.prod(v.shape)), p.startswith("a_")) for v, p in
         zip(obj.trainable_variables, paths)]
    )  # fmt: skip
    assert np.abs(h[np.ix_(in_a, ~in_a)]).max() < 1e-12  # block-diagonal by construction
    full = np.linalg.eigvalsh(h)
    for regex, mask in (("^a_", in_a), ("^b_", ~in_a)):
        block = h[np.ix_(mask, mask)]
        exact = np.sort(np.linalg.eigvalsh(block))
        top = hessian.hessian_eigenvalues(obj, k=3, variables=regex, tol=1e-9, seed=0)
        low = hessian.hessian_eigenvalues(
            obj, k=2, which="smallest", variables=regex, tol=1e-9, seed=0
        )
        np.testing.assert_allclose(top.values, exact[::-1][:3], rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(low.values, exact[:2], rtol=RTOL, atol=1e-12)
        assert top.converged and top.n_params == mask.sum()
        assert top.variables == tuple(p for p in paths if p.startswith(regex[1:]))
        assert all(np.min(np.abs(full - lam)) < 1e-9 for lam in exact)  # a block of H's
        spectrum = hessian.hessian_spectrum(obj, steps=int(mask.sum()), runs=1, seed=0,
                                            variables=regex)  # fmt: skip
        assert spectrum.n_params == mask.sum() and spectrum.variables == top.variables
        # a full Krylov space: the quadrature nodes are the block's eigenvalues
        np.testing.assert_allclose(np.sort(spectrum.nodes[0]), exact, rtol=RTOL, atol=1e-9)
    report = landscape.layer_curvature(obj, {"a": "^a_", "b": "^b_"}, tol=1e-9, trace=True,
                                       trace_samples=400, trace_tol=0.01)  # fmt: skip
    for i, mask in enumerate((in_a, ~in_a)):
        block = h[np.ix_(mask, mask)]
        assert report.lambda_max[i] == pytest.approx(_top(block, 1)[0], rel=RTOL)
        assert report.n_params[i] == mask.sum()
        # blocks of 13 and 16 parameters ≤ trace_samples: traced exactly
        assert report.trace[i] == pytest.approx(np.trace(block), rel=1e-10)
        assert report.trace_method[i] == "exact" and report.trace_stderr[i] == 0.0


def test_a_restricted_run_gives_the_eigenvalues_of_the_dense_hessians_block(float64):
    model = _tiny_mlp()  # Dense, BatchNorm, Dropout, Dense: an ordinary, coupled Hessian
    rng = np.random.default_rng(2)
    x, y, s = rng.normal(size=(23, 3)), rng.integers(0, 3, 23), rng.uniform(0.5, 2.0, 23)
    h, sizes = _dense_hessian(model, x, y, s)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    obj = landscape.Objective(model, (x, y, s), loss, batch_size=5, metrics=())
    starts = np.concatenate([[0], np.cumsum(sizes)])
    variables = obj.trainable_variables
    layer = model.layers[1]  # the first Dense: kernel and bias
    cases = {
        "layer": (layer, [0, 1]),
        "name": (layer.name, [0, 1]),
        "paths": ([variables.paths[2], variables.paths[5]], [2, 5]),  # gamma, last bias
        "variables": ([variables[4]], [4]),  # the last kernel
    }
    for selector, slots in cases.values():
        index = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in slots])
        exact = np.sort(np.linalg.eigvalsh(h[np.ix_(index, index)]))
        eig = hessian.hessian_eigenvalues(obj, k=2, variables=selector, tol=1e-8, seed=1)
        np.testing.assert_allclose(eig.values, exact[::-1][:2], rtol=RTOL, atol=1e-12)
        assert eig.n_params == index.size
        assert eig.variables == tuple(variables.paths[i] for i in slots)
    unrestricted = hessian.hessian_eigenvalues(obj, k=1, tol=1e-8, seed=1)
    assert unrestricted.variables == tuple(variables.paths) and unrestricted.curvature == "hessian"


def test_a_block_eigenvector_is_a_direction_on_the_block_that_surfaces_accept(float64):
    model, x, y = _two_towers()
    obj = landscape.Objective(model, (x, y), "mse", batch_size=7, metrics=())
    eig = hessian.hessian_eigenvalues(obj, k=1, variables="b_hidden", tol=1e-9, seed=0)
    v = eig.vectors[0]
    assert v.paths == ["b_hidden/kernel", "b_hidden/bias"]
    assert v.metadata["variables"] == v.paths and v.norm() == pytest.approx(1.0)
    hv = obj.hessian_vector_product(v)  # the full H on the zero-padded vector
    block = [obj.trainable_variables.paths.index(p) for p in v.paths]
    for i, p in zip(block, v.paths):
        np.testing.assert_allclose(hv[i].numpy(), eig.values[0] * v.arrays[p], atol=1e-8)
    surf = landscape.compute_surface(obj, [v], x="-0.5:0.5:3", verbose=0)
    for alpha, value in zip((-0.5, 0.0, 0.5), surf.values["train_loss"]):
        assert value == pytest.approx(obj.evaluate(v * alpha)["loss"], rel=1e-12)


# ----------------------------------------------------------------------------------- GGN
def _mlp(activation=None):
    keras.utils.set_random_seed(1)
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inp)
    return keras.Model(inp, keras.layers.Dense(3, activation=activation)(h))


@pytest.mark.parametrize("case", ["mse", "ce_logits", "ce_softmax"])
def test_ggn_products_equal_dense_jt_hl_j_with_sample_weights(float64, case):
    rng = np.random.default_rng(5)
    x, s = rng.normal(size=(21, 3)), rng.uniform(0.5, 2.0, 21)
    labels, targets = rng.integers(0, 3, 21), rng.normal(size=(21, 3))
    logits_model = _mlp()
    if case == "mse":
        model, y, loss = logits_model, targets, "mse"

        def loss_of(f):  # Keras: per-sample mean over the outputs, weighted mean over samples
            return tf.reduce_sum(s * tf.reduce_mean((f - targets) ** 2, -1)) / len(s)

    else:
        y = labels
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model = logits_model

        def loss_of(f):  # at the logits, also for the softmax model (Martens 2014, §9)
            ce = keras.losses.sparse_categorical_crossentropy(labels, f, from_logits=True)
            return tf.reduce_sum(s * ce) / len(s)

        if case == "ce_softmax":
            model = _mlp("softmax")
            model.set_weights(logits_model.get_weights())
            loss = "sparse_categorical_crossentropy"
    expected = _dense_ggn(model, x, loss_of, outputs_of=logits_model)
    obj = landscape.Objective(model, (x, y, s), loss, batch_size=4, metrics=())
    g = _operator_matrix(obj)
    np.testing.assert_allclose(g, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    assert np.linalg.eigvalsh(g).min() >= -1e-10
    assert obj.trace_count == {"train": 1, "train/ggn": 1}  # one trace for every product
    eig = hessian.hessian_eigenvalues(obj, k=2, curvature="ggn", tol=1e-8, seed=0)
    np.testing.assert_allclose(eig.values, _top(expected, 2), rtol=RTOL)
    assert eig.curvature == "ggn" and eig.vectors[0].metadata["kind"] == "ggn_eigenvector"
    spectrum = hessian.hessian_spectrum(obj, steps=obj.flat.n, runs=1, curvature="ggn", seed=0)
    assert spectrum.nodes.min() >= -1e-10 and spectrum.curvature == "ggn"
    # a block of G: the GGN restricted to the first layer
    first = [0, 1]
    sizes = [int(np.prod(v.shape)) for v in obj.trainable_variables]
    index = np.arange(sum(sizes[i] for i in first))
    block = hessian.hessian_eigenvalues(
        obj, k=1, curvature="ggn", variables=model.layers[1], tol=1e-8, seed=0
    )
    assert block.values[0] == pytest.approx(_top(expected[np.ix_(index, index)], 1)[0], rel=RTOL)


def test_ggn_of_two_outputs_with_loss_weights_and_its_trace(float64):
    keras.utils.set_random_seed(2)
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inp)
    reg = keras.layers.Dense(2, name="reg")(h)
    cls = keras.layers.Dense(3, name="cls")(h)
    model = keras.Model(inp, {"reg": reg, "cls": cls})
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss={"reg": "mse", "cls": ce}, loss_weights={"reg": 0.3, "cls": 2.0})
    rng = np.random.default_rng(6)
    x, t, c = rng.normal(size=(17, 3)), rng.normal(size=(17, 2)), rng.integers(0, 3, 17)
    obj = landscape.Objective(model, (x, {"reg": t, "cls": c}), batch_size=5, metrics=())

    theta, outputs = _theta(model)
    with tf.GradientTape(persistent=True) as tape:
        f = outputs(theta, x)
    jr = tape.jacobian(f["reg"], theta).numpy().reshape(-1, theta.shape[0])
    jc = tape.jacobian(f["cls"], theta).numpy().reshape(-1, theta.shape[0])

    def hess(z0, loss_of):
        z = tf.Variable(z0)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = loss_of(z)
            g = inner.gradient(loss, z)
        return outer.jacobian(g, z).numpy().reshape(z0.shape[0] * z0.shape[1], -1)

    hr = hess(f["reg"], lambda z: 0.3 * tf.reduce_mean((z - t) ** 2))
    hc = hess(f["cls"], lambda z: 2.0 * tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(c, z, from_logits=True)))  # fmt: skip
    expected = jr.T @ hr @ jr + jc.T @ hc @ jc
    g = _operator_matrix(obj)
    np.testing.assert_allclose(g, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    tr = hessian.hessian_trace(obj, samples=300, tol=0.01, curvature="ggn", seed=0)
    assert tr.method == "exact" and tr.n_hvp == obj.flat.n  # 41 parameters ≤ 300 probes
    assert tr.estimate == pytest.approx(np.trace(expected), rel=1e-10)
    assert tr.curvature == "ggn" and tr.n_params == obj.flat.n
    probes = hessian.hessian_trace(obj, tol=0.05, curvature="ggn", seed=0, method="hutchinson")
    assert probes.method == "hutchinson" and probes.curvature == "ggn"
    assert abs(probes.estimate - np.trace(expected)) < 5 * probes.stderr


# --------------------------------------------------------------------------- report, plot
def test_layer_report_by_layer_as_dict_and_plot(float64):
    model, x, y = _two_towers()
    obj = landscape.Objective(model, (x, y), "mse", batch_size=7, metrics=())
    report = landscape.layer_curvature(obj, trace=True, trace_samples=20)
    assert report.names == ("a_hidden", "b_hidden", "a_out", "b_out")
    assert report.n_params.sum() == obj.flat.n and report.curvature == "hessian"
    rows = report.as_dict()["layers"]
    assert [r["name"] for r in rows] == list(report.names)
    ax = landscape.plot_layer_curvature(report)
    assert len(ax.get_yticklabels()) == 4
    ax = landscape.plot_layer_curvature(report.as_dict(), trace=False, log=False)
    assert len(ax.patches) == 4
    matplotlib.pyplot.close("all")


# -------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variables": "no_such_layer"}, "`variables`"),
        ({"variables": "("}, "`variables`"),
        ({"variables": ["a_hidden/nope"]}, "`variables`"),
        ({"variables": [3]}, "`variables`"),
        ({"variables": 2.5}, "`variables`"),
        ({"variables": []}, "`variables`"),
        ({"curvature": "fisher"}, "curvature"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(float64, kwargs, match):
    model, x, y = _two_towers()
    obj = landscape.Objective(model, (x, y), "mse", batch_size=7, metrics=())
    for fn in (hessian.hessian_eigenvalues, hessian.hessian_trace, hessian.hessian_spectrum):
        with pytest.raises(ValueError, match=match):
            fn(obj, **kwargs)
    with pytest.raises(ValueError, match="`groups`"):
        landscape.layer_curvature(obj, groups=5)


def test_ggn_refuses_losses_without_one(float64):
    model = _mlp()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    obj = landscape.Objective(model, (x, y), "mae", batch_size=4, metrics=())
    with pytest.raises(ValueError, match="curvature='ggn'.*'mae'"):
        hessian.hessian_eigenvalues(obj, curvature="ggn")
    # probabilities expected but not given: a cross-entropy on raw (linear) outputs
    obj = landscape.Objective(
        model, (x, rng.integers(0, 3, 8)), "sparse_categorical_crossentropy", metrics=()
    )
    with pytest.raises(ValueError, match="curvature='ggn'.*softmax"):
        hessian.hessian_trace(obj, curvature="ggn")


def test_cli_refuses_inconsistent_layer_options_with_one_sentence(tmp_path):
    from click.testing import CliRunner

    from landscape.cli import main

    model = str(tmp_path / "m.keras")
    for args, flag in ((["--layers-plot", "p.png"], "--layers"),
                       (["--layers", "--variables", "conv"], "--variables")):  # fmt: skip
        result = CliRunner().invoke(main, ["hessian", model, *args])
        assert result.exit_code == 2 and flag in result.output
        assert "Traceback" not in result.output
