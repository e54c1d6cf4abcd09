"""Directions: filter normalization per Keras layer type, modes, arithmetic, interpolation, PCA."""

import keras
import numpy as np
import pytest

import landscape
from landscape.directions import Direction, float_variables


def _randomize(model, seed=0):
    """Random weights with very different filter norms, so that a wrong axis is visible."""
    rng = np.random.default_rng(seed)
    for v in float_variables(model, "all"):
        shape = tuple(v.shape)
        value = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=shape)
        if "variance" in v.name:
            value = np.abs(value) + 0.1
        v.assign(value.astype(v.dtype))
    return model


def _model(case, use_bias=True):
    L = keras.layers
    if case == "dense":
        inp, layer = keras.Input((5,)), L.Dense(3, use_bias=use_bias)
    elif case == "conv1d":
        inp, layer = keras.Input((8, 2)), L.Conv1D(3, 3, use_bias=use_bias)
    elif case == "conv2d":
        inp, layer = keras.Input((6, 6, 2)), L.Conv2D(3, 3, use_bias=use_bias)
    elif case == "conv3d":
        inp, layer = keras.Input((4, 4, 4, 2)), L.Conv3D(3, 2, use_bias=use_bias)
    elif case == "conv2d_transpose":
        inp, layer = keras.Input((4, 4, 2)), L.Conv2DTranspose(5, 3, use_bias=use_bias)
    elif case == "depthwise_conv2d":
        inp, layer = keras.Input((6, 6, 2)), L.DepthwiseConv2D(3, depth_multiplier=3)
    elif case == "separable_conv2d":
        inp, layer = keras.Input((6, 6, 2)), L.SeparableConv2D(4, 3, depth_multiplier=2)
    elif case == "embedding":
        inp, layer = keras.Input((3,), dtype="int32"), L.Embedding(7, 4)
    elif case == "batch_norm":
        inp = keras.Input((5,))
        return _randomize(keras.Model(inp, L.BatchNormalization()(L.Dense(3, use_bias=False)(inp))))
    elif case == "layer_norm":
        inp = keras.Input((5,))
        return _randomize(keras.Model(inp, L.LayerNormalization()(L.Dense(3)(inp))))
    else:
        raise AssertionError(case)
    return _randomize(keras.Model(inp, layer(inp)))


# Axes that are summed over for one filter's norm, written out per layer type and variable
# (independently of landscape.filter_axes): Keras kernels are (..., in, out).
REDUCE_AXES = {
    ("dense", "kernel"): (0,),  # (in, out)
    ("conv1d", "kernel"): (0, 1),  # (k, in, out)
    ("conv2d", "kernel"): (0, 1, 2),  # (kh, kw, in, out)
    ("conv3d", "kernel"): (0, 1, 2, 3),
    ("conv2d_transpose", "kernel"): (0, 1, 3),  # (kh, kw, out, in)
    ("depthwise_conv2d", "kernel"): (0, 1),  # (kh, kw, in, multiplier)
    ("separable_conv2d", "depthwise_kernel"): (0, 1),
    ("separable_conv2d", "pointwise_kernel"): (0, 1, 2),  # (1, 1, in*mult, out)
    ("embedding", "embeddings"): (1,),  # a row per token
    ("batch_norm", "kernel"): (0,),
    ("layer_norm", "kernel"): (0,),
}
CASES = sorted({case for case, _ in REDUCE_AXES})


def _norms(a, axes):
    return np.sqrt(np.sum(np.asarray(a, np.float64) ** 2, axis=axes))


@pytest.mark.parametrize("case", CASES)
def test_filter_norms_match_weights_per_layer_type(case):
    model = _model(case)
    d = landscape.random_direction(model, norm="filter", ignore="biasbn", seed=3)
    variables = float_variables(model, "trainable")
    assert d.paths == [v.path for v in variables]
    checked = 0
    for v in variables:
        w, a = keras.ops.convert_to_numpy(v.value), d.arrays[v.path]
        assert a.shape == w.shape and a.dtype == w.dtype
        if w.ndim <= 1:
            np.testing.assert_array_equal(a, 0.0)  # biases, BN/LN gamma and beta are ignored
            continue
        axes = REDUCE_AXES[(case, v.name)]
        np.testing.assert_allclose(_norms(a, axes), _norms(w, axes), rtol=1e-5)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("conv2d_transpose", "kernel"),
        ("depthwise_conv2d", "kernel"),
        ("separable_conv2d", "depthwise_kernel"),
        ("embedding", "embeddings"),
    ],
)
def test_a_last_axis_rule_would_fail_the_check(case, name):
    """The layouts where a naive "filters on the last axis" port is wrong really differ."""
    from landscape.directions import normalize_array

    model = _model(case)
    v = [v for v in model.trainable_variables if v.name == name][0]
    w = keras.ops.convert_to_numpy(v.value)
    raw = np.random.default_rng(0).standard_normal(w.shape)
    wrong = normalize_array(raw, w, norm="filter", keep=(w.ndim - 1,))
    axes = REDUCE_AXES[(case, name)]
    assert not np.allclose(_norms(wrong, axes), _norms(w, axes), rtol=1e-3)


@pytest.mark.parametrize("case", ["batch_norm", "layer_norm", "dense"])
def test_ignore_none_normalizes_small_tensors_as_one_filter(case):
    model = _model(case)
    d = landscape.random_direction(model, ignore="none", seed=1, include="all")
    for v in float_variables(model, "all"):
        if len(v.shape) == 1:
            w = keras.ops.convert_to_numpy(v.value)
            assert np.linalg.norm(d.arrays[v.path]) == pytest.approx(np.linalg.norm(w), rel=1e-5)


@pytest.mark.parametrize("case", ["dense", "conv2d", "conv2d_transpose"])
def test_use_bias_false(case):
    model = _model(case, use_bias=False)
    d = landscape.random_direction(model, seed=0)
    assert len(d.paths) == 1 and d.norm() > 0


def test_include_all_adds_moving_statistics():
    model = _model("batch_norm")
    d_train = landscape.random_direction(model, seed=0, include="trainable")
    d_all = landscape.random_direction(model, seed=0, include="all", ignore="none")
    moving = [v.path for v in model.non_trainable_variables]
    assert len(moving) == 2
    assert not set(moving) & set(d_train.paths)
    for p in moving:
        assert p in d_all.paths and np.linalg.norm(d_all.arrays[p]) > 0


@pytest.mark.parametrize("norm", ["layer", "weight", "none"])
def test_other_norms(norm):
    model = _model("conv2d")
    d = landscape.random_direction(model, norm=norm, ignore="none", seed=5)
    raw = Direction(
        {
            v.path: np.random.default_rng(5).standard_normal(tuple(v.shape))
            for v in model.trainable_variables[:1]
        }
    )
    for v in model.trainable_variables:
        w, a = keras.ops.convert_to_numpy(v.value).astype(np.float64), d.arrays[v.path]
        if norm == "layer":
            assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(w), rel=1e-5)
        elif norm == "weight" and v.path in raw.arrays:
            np.testing.assert_allclose(a, raw.arrays[v.path] * w, rtol=1e-5)
        elif norm == "none" and v.path in raw.arrays:
            np.testing.assert_allclose(a, raw.arrays[v.path], rtol=1e-6)


def test_unknown_modes_are_refused():
    model = _model("dense")
    with pytest.raises(ValueError, match=r"Unknown norm 'filters'; expected one of"):
        landscape.random_direction(model, norm="filters")
    with pytest.raises(ValueError, match=r"Unknown ignore 'bias'"):
        landscape.random_direction(model, ignore="bias")
    with pytest.raises(ValueError, match=r"Unknown include 'states'"):
        landscape.random_direction(model, include="states")


def test_same_seed_same_direction_and_orthogonalization():
    model = _model("conv2d")
    a = landscape.random_direction(model, seed=7)
    b = landscape.random_direction(model, seed=7)
    c = landscape.random_direction(model, seed=8)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    o = landscape.random_direction(model, seed=8, orthogonal_to=a)
    assert abs(o.dot(a)) < 1e-5 * o.norm() * a.norm()
    assert abs(c.dot(a)) > 1e-3 * c.norm() * a.norm()


def test_direction_arithmetic_against_numpy():
    rng = np.random.default_rng(0)
    a = Direction({"k": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))})
    b = Direction({"k": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))})
    flat = lambda d: np.concatenate([x.ravel() for x in d.arrays.values()])  # noqa: E731
    np.testing.assert_allclose(flat(a + b), flat(a) + flat(b))
    np.testing.assert_allclose(flat(a - b), flat(a) - flat(b))
    np.testing.assert_allclose(flat(2.5 * a), 2.5 * flat(a))
    np.testing.assert_allclose(flat(a / 4), flat(a) / 4)
    np.testing.assert_allclose(flat(-a), -flat(a))
    assert a.dot(b) == pytest.approx(flat(a) @ flat(b))
    assert a.norm() == pytest.approx(np.linalg.norm(flat(a)))
    with pytest.raises(ValueError, match="different variables"):
        _ = a + Direction({"k": a.arrays["k"]})


def test_direction_save_load_roundtrip(tmp_path):
    model = _model("separable_conv2d")
    d = landscape.random_direction(model, seed=2)
    d.save(str(tmp_path / "d.h5"))
    e = Direction.load(str(tmp_path / "d.h5"))
    assert e.paths == d.paths and e.fingerprint() == d.fingerprint()
    assert e.metadata["seed"] == 2 and e.metadata["norm"] == "filter"


def test_aligned_by_path_not_position():
    model = _model("layer_norm")
    variables = float_variables(model, "all")
    d = Direction({v.path: np.full(tuple(v.shape), i + 1.0) for i, v in enumerate(variables)})
    reversed_d = Direction(dict(reversed(list(d.arrays.items()))))
    for a, b in zip(d.aligned(variables), reversed_d.aligned(variables)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not have"):
        Direction({"nope/kernel": np.zeros(3)}).aligned(variables)


def test_interpolation_direction_reaches_model_b():
    a, b = _model("batch_norm"), _model("batch_norm")
    _randomize(b, seed=1)
    d = landscape.interpolation_direction(a, b)
    for va, vb in zip(float_variables(a, "all"), float_variables(b, "all")):
        wa, wb = keras.ops.convert_to_numpy(va.value), keras.ops.convert_to_numpy(vb.value)
        np.testing.assert_allclose(wa + d.arrays[va.path], wb, rtol=1e-6, atol=1e-6)


def test_pca_directions_recover_a_planar_trajectory():
    model = _model("dense")
    variables = float_variables(model, "trainable")
    w = {v.path: keras.ops.convert_to_numpy(v.value).astype(np.float64) for v in variables}
    kernel = variables[0].path
    # A trajectory in the plane of two orthonormal kernel directions u, v (bias fixed).
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(w[kernel].size, 2)))
    u, v = q[:, 0].reshape(w[kernel].shape), q[:, 1].reshape(w[kernel].shape)
    t = np.linspace(0.0, 1.0, 9)
    a_t, b_t = 3.0 * (1 - t) ** 2 + 0.5, 0.4 * np.sin(3 * t)
    checkpoints = [
        {**w, kernel: (w[kernel] + a * u + b * v).astype(np.float32)} for a, b in zip(a_t, b_t)
    ]
    res = landscape.pca_directions(checkpoints, model)
    d1, d2 = (d.arrays[kernel].astype(np.float64) for d in res.directions)
    # Orthonormal directions spanning the plane of u and v.
    for d in (d1, d2):
        assert np.vdot(d, u) ** 2 + np.vdot(d, v) ** 2 == pytest.approx(1.0, abs=1e-5)
    assert abs(np.vdot(d1, d2)) < 1e-6
    # Coordinates reconstruct every checkpoint: c1 d1 + c2 d2 = a u + b v.
    for (c1, c2), a, b in zip(res.coordinates, a_t, b_t):
        np.testing.assert_allclose(c1 * d1 + c2 * d2, a * u + b * v, atol=1e-5)
    # Explained variance of the centred 2-D cloud (a_t, b_t), computed independently.
    ab = np.stack([a_t, b_t], axis=1)
    eig = np.sort(np.linalg.eigvalsh(np.cov(ab.T)))[::-1]
    np.testing.assert_allclose(res.explained_variance_ratio, eig / eig.sum(), atol=1e-5)
    for d in res.directions:  # biases are not part of the PCA
        np.testing.assert_array_equal(d.arrays[variables[1].path], 0.0)


def test_pca_from_models_and_get_weights_lists_agree():
    final = _model("dense")
    checkpoints = [_randomize(_model("dense"), seed=s) for s in (1, 2, 3)]
    from_models = landscape.pca_directions(checkpoints, final)
    from_lists = landscape.pca_directions([m.get_weights() for m in checkpoints], final)
    np.testing.assert_allclose(from_models.coordinates, from_lists.coordinates, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 entries"):
        landscape.pca_directions(checkpoints[:1], final)


def test_rebind_to_a_rebuilt_model_with_other_names():
    a, b = _model("conv2d"), _model("conv2d")
    d = landscape.random_direction(a, seed=0)
    assert d.paths != [v.path for v in b.trainable_variables]  # e.g. conv2d vs conv2d_1
    with pytest.raises(ValueError, match="rebind"):
        d.aligned(b.trainable_variables)
    e = d.rebind(b)
    assert e.paths == [v.path for v in b.trainable_variables]
    assert e.fingerprint() == d.fingerprint()
