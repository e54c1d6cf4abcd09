"""Filter rules by layer semantics: every built-in Keras layer that owns a kernel, the biasbn
class, the fallback for unknown layers, and one-to-one directions for every model structure.

Each check compares per-filter norms of a filter-normalized random direction with the weights'
per-filter norms, using filter axes written out here by hand per layer type (an independent
rule: the expected axes are attached to the variable objects, never taken from
``landscape.directions.filter_axes``).
"""

import warnings

import keras
import numpy as np
import pytest

import landscape
from landscape.directions import (
    Direction,
    FilterRuleWarning,
    einsum_filter_axes,
    filter_rules,
    float_variables,
    normalize_array,
    variable_keys,
)

L = keras.layers
BIASBN = "biasbn"  # expected: zeroed under ignore="biasbn", one filter under ignore="none"


def _randomize(model, seed=0, scales=None):
    """Random weights with very different filter norms, so that a wrong axis is visible."""
    rng = np.random.default_rng(seed)
    for v in float_variables(model, "all"):
        shape = tuple(v.shape)
        value = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=shape)
        if "variance" in v.name:
            value = np.abs(value) + 0.1
        if scales is not None:
            value = value * scales.get(id(v), 1.0)
        v.assign(value.astype(v.dtype))
    return model


def _norms(a, keep):
    a = np.asarray(a, np.float64)
    return np.sqrt(np.sum(a * a, axis=tuple(i for i in range(a.ndim) if i not in keep)))


def _check(model, expected, *, include="trainable", seed=3):
    """``expected``: [(variable, filter axes or BIASBN)], covering every variable of ``include``."""
    variables = float_variables(model, include)
    by_id = {id(v): keep for v, keep in expected}
    assert sorted(by_id) == sorted(id(v) for v in variables), "expectations must cover all"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterRuleWarning)  # built-in layers never fall back
        d = landscape.random_direction(model, ignore="biasbn", seed=seed, include=include)
        d_none = landscape.random_direction(model, ignore="none", seed=seed, include=include)
    assert d.paths == list(variables.paths) and len(set(d.paths)) == len(variables)
    checked = 0
    for v, a, b in zip(variables, d.aligned(variables), d_none.aligned(variables)):
        w = keras.ops.convert_to_numpy(v.value)
        assert a.shape == w.shape and a.dtype == w.dtype
        keep = by_id[id(v)]
        if keep == BIASBN:
            np.testing.assert_array_equal(a, 0.0)
            assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(w), rel=1e-5)
            assert np.linalg.norm(b) > 0
            continue
        np.testing.assert_allclose(_norms(a, keep), _norms(w, keep), rtol=1e-5)
        np.testing.assert_allclose(_norms(b, keep), _norms(w, keep), rtol=1e-5)
        checked += 1
    return checked


def _single(layer, input_shape, dtype="float32"):
    inp = keras.Input(input_shape, dtype=dtype)
    return _randomize(keras.Model(inp, layer(inp))), layer


def _kernel_bias(layer, keep):
    return [(layer.kernel, keep), (layer.bias, BIASBN)]


# --- Dense, EinsumDense, MultiHeadAttention -------------------------------------------------


def test_dense():
    model, layer = _single(L.Dense(3), (5,))
    assert _check(model, _kernel_bias(layer, (1,))) == 1


EINSUM_CASES = [
    # equation, output_shape, bias_axes, input shape, filter axes of the kernel (by hand)
    ("ab,bc->ac", 4, "c", (5,), (1,)),
    ("...b,bc->...c", 4, "c", (3, 5), (1,)),  # left ellipsis, as Keras' Dense-like uses
    ("ab...,bc->ac...", (4, 3), "c", (5, 3), (1,)),  # right ellipsis
    ("abc,cde->abde", (None, 2, 3), "de", (4, 6), (1, 2)),  # MHA query: (head, unit)
    ("abcd,cde->abe", (None, 5), "e", (4, 2, 3), (2,)),  # MHA output projection
    ("abc,bcd->abd", (3, 4), "bd", (3, 5), (0, 2)),  # a kernel axis shared with the input
]


@pytest.mark.parametrize(("equation", "out", "bias_axes", "shape", "keep"), EINSUM_CASES)
def test_einsum_dense(equation, out, bias_axes, shape, keep):
    model, layer = _single(L.EinsumDense(equation, output_shape=out, bias_axes=bias_axes), shape)
    assert _check(model, _kernel_bias(layer, keep)) == 1
    assert einsum_filter_axes(equation, len(layer.kernel.shape)) == keep


def test_einsum_filter_axes_all_summed_and_malformed():
    assert einsum_filter_axes("ab,b->a", 1) is None  # every axis summed: one filter
    with pytest.raises(ValueError, match="does not name"):
        einsum_filter_axes("ab,bc->ac", 3)
    with pytest.raises(ValueError, match="Cannot parse"):
        einsum_filter_axes("ab->a", 2)


def _mha_model():
    q = keras.Input((4, 6))
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")
    ln = L.LayerNormalization(name="ln")
    model = _randomize(keras.Model(q, ln(L.Add()([q, mha(q, q)]))))
    return model, mha, ln


def test_multi_head_attention_rules():
    model, mha, ln = _mha_model()
    expected = [(ln.gamma, BIASBN), (ln.beta, BIASBN)]
    for dense in (mha.query_dense, mha.key_dense, mha.value_dense):
        assert tuple(dense.kernel.shape) == (6, 2, 3) and tuple(dense.bias.shape) == (2, 3)
        expected += _kernel_bias(dense, (1, 2))  # (d_model, heads, key_dim): (head, unit)
    assert tuple(mha.output_dense.kernel.shape) == (2, 3, 6)
    assert tuple(mha.output_dense.bias.shape) == (6,)
    expected += _kernel_bias(mha.output_dense, (2,))
    assert _check(model, expected) == 4
    rules = filter_rules(model)
    assert (rules["mha/query/kernel"].role, rules["mha/query/kernel"].axes) == ("kernel", (1, 2))
    assert rules["mha/query/bias"].biasbn and rules["mha/query/bias"].axes is None
    assert rules["mha/attention_output/kernel"].axes == (2,)
    assert rules["ln/gamma"].role == "normalization"
    assert not any(r.fallback for r in rules.values())


def test_multi_head_attention_head_unit_ratios_are_one_and_a_last_axis_rule_is_not():
    model, mha, _ = _mha_model()
    d = landscape.random_direction(model, seed=0)
    w = keras.ops.convert_to_numpy(mha.query_dense.kernel.value)
    ratio = _norms(d.arrays["mha/query/kernel"], (1, 2)) / _norms(w, (1, 2))
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-5)
    raw = np.random.default_rng(0).standard_normal(w.shape)
    last_axis = normalize_array(raw, w, norm="filter", keep=(2,))
    wrong = _norms(last_axis, (1, 2)) / _norms(w, (1, 2))
    assert np.max(np.abs(wrong - 1.0)) > 0.1


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_multi_head_attention_biases_and_layer_norm_follow_ignore(ignore):
    model, mha, ln = _mha_model()
    d = landscape.random_direction(model, ignore=ignore, seed=1)
    small = [f"mha/{p}/bias" for p in ("query", "key", "value", "attention_output")]
    small += ["ln/gamma", "ln/beta"]
    for path in small:
        norm = np.linalg.norm(d.arrays[path])
        if ignore == "biasbn":
            assert norm == 0.0, path
        else:
            v = [v for v in model.variables if v.path == path][0]
            assert norm == pytest.approx(np.linalg.norm(keras.ops.convert_to_numpy(v.value)))


def test_group_query_attention():
    x = keras.Input((4, 6))
    gqa = L.GroupQueryAttention(head_dim=3, num_query_heads=4, num_key_value_heads=2, name="gqa")
    model = _randomize(keras.Model(x, gqa(x, x)))
    by_path = {v.path: v for v in model.variables}  # no public sub-layer attributes here
    keep = {"query": (1, 2), "key": (1, 2), "value": (1, 2), "attention_output": (2,)}
    expected = []  # q/k/v kernels (d_model, heads, head_dim); output (heads, head_dim, d_model)
    for name, axes in keep.items():
        expected += [(by_path[f"gqa/{name}/kernel"], axes), (by_path[f"gqa/{name}/bias"], BIASBN)]
    assert _check(model, expected) == 4


def test_rule_table_of_other_builtin_layers():
    x = keras.Input((4, 6))
    h = L.Attention(use_scale=True, score_mode="concat", name="att")([x, x])
    h = L.PReLU(name="prelu")(L.AdditiveAttention(name="add_att")([h, h]))
    h = L.TimeDistributed(L.SpectralNormalization(L.Dense(3, name="sn_dense"), name="sn"))(h)
    t = keras.Input((5,), dtype="int32")
    emb = L.ReversibleEmbedding(11, 4, tie_weights=False, name="rev")
    lora = L.Dense(3, name="lora")
    model = keras.Model([x, t], [h, emb(lora(emb(t)) @ np.ones((3, 4), "float32"), reverse=True)])
    lora.enable_lora(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FilterRuleWarning)
        rules = {k: (r.role, r.axes) for k, r in filter_rules(model).items()}
    assert rules == {
        "att/scale": ("scale", None),
        "att/concat_score_weight": ("scale", None),
        "add_att/scale": ("scale", None),
        "prelu/alpha": ("scale", None),
        "time_distributed/sn/sn_dense/kernel": ("kernel", (1,)),
        "time_distributed/sn/sn_dense/bias": ("bias", None),
        "time_distributed/sn/vector_u": ("state", None),
        "rev/embeddings": ("embedding", (0,)),
        "rev/reverse_embeddings": ("kernel", (1,)),  # (dim, vocab): a column per token
        "lora/kernel": ("kernel", (1,)),
        "lora/bias": ("bias", None),
        "lora/lora_kernel_a": ("kernel", (1,)),  # (in, rank)
        "lora/lora_kernel_b": ("kernel", (1,)),  # (rank, out)
    }


# --- Convolutions -----------------------------------------------------------------------


CONV_CASES = [
    # layer, input shape, kernel filter axes by hand: Keras kernels are (k..., in, out)
    (lambda: L.Conv1D(3, 3), (8, 2), (2,)),
    (lambda: L.Conv2D(3, 3), (6, 6, 2), (3,)),
    (lambda: L.Conv3D(3, 2), (4, 4, 4, 2), (4,)),
    (lambda: L.Conv1DTranspose(5, 3), (4, 2), (1,)),  # (k, out, in)
    (lambda: L.Conv2DTranspose(5, 3), (4, 4, 2), (2,)),
    (lambda: L.Conv3DTranspose(5, 2), (3, 3, 3, 2), (3,)),
    (lambda: L.DepthwiseConv1D(3, depth_multiplier=3), (8, 2), (1, 2)),  # (k, in, mult)
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=3), (6, 6, 2), (2, 3)),
]


@pytest.mark.parametrize(("make", "shape", "keep"), CONV_CASES)
def test_convolutions(make, shape, keep):
    model, layer = _single(make(), shape)
    assert _check(model, _kernel_bias(layer, keep)) == 1


@pytest.mark.parametrize(
    ("make", "shape", "depthwise_keep", "pointwise_keep"),
    [
        (lambda: L.SeparableConv1D(4, 3, depth_multiplier=2), (8, 2), (1, 2), (2,)),
        (lambda: L.SeparableConv2D(4, 3, depth_multiplier=2), (6, 6, 2), (2, 3), (3,)),
    ],
)
def test_separable_convolutions(make, shape, depthwise_keep, pointwise_keep):
    model, layer = _single(make(), shape)
    expected = [
        (layer.depthwise_kernel, depthwise_keep),
        (layer.pointwise_kernel, pointwise_keep),
        (layer.bias, BIASBN),
    ]
    assert _check(model, expected) == 2


def test_embedding():
    model, layer = _single(L.Embedding(7, 4), (3,), dtype="int32")
    assert _check(model, [(layer.embeddings, (0,))]) == 1  # one row per token


# --- Recurrent layers ------------------------------------------------------------------


def _cell_rules(cell, last=1):
    # kernel (in, units·gates), recurrent kernel (units, units·gates): a column per unit of a
    # gate, i.e. the last axis (axis 1; axis 2 for ConvLSTM1D's (k, in, 4·filters) kernels)
    return [(cell.kernel, (last,)), (cell.recurrent_kernel, (last,)), (cell.bias, BIASBN)]


@pytest.mark.parametrize(
    "make",
    [lambda: L.LSTM(3), lambda: L.GRU(3, reset_after=True), lambda: L.SimpleRNN(3)],
    ids=["lstm", "gru", "simple_rnn"],
)
def test_recurrent_layers(make):
    model, layer = _single(make(), (5, 2))
    if isinstance(layer, L.GRU):
        assert tuple(layer.cell.bias.shape) == (2, 9)  # reset_after=True: a 2-D bias
    assert _check(model, _cell_rules(layer.cell)) == 2


def test_bidirectional_lstm_in_a_sequential():
    bi = L.Bidirectional(L.LSTM(3))
    head = L.Dense(2)
    model = _randomize(keras.Sequential([keras.Input((5, 2)), bi, L.Dropout(0.1), head]))
    expected = _cell_rules(bi.forward_layer.cell) + _cell_rules(bi.backward_layer.cell)
    assert _check(model, expected + _kernel_bias(head, (1,))) == 5


def test_conv_lstm():
    model, layer = _single(L.ConvLSTM1D(2, 3), (3, 6, 2))
    assert tuple(layer.cell.kernel.shape) == (3, 2, 8)
    assert _check(model, _cell_rules(layer.cell, last=2)) == 2


# --- Normalization layers --------------------------------------------------------------


NORMALIZATION_CASES = [
    ("batch", lambda: L.BatchNormalization()),
    ("layer", lambda: L.LayerNormalization()),
    ("group", lambda: L.GroupNormalization(groups=2)),
]
if hasattr(L, "RMSNormalization"):
    NORMALIZATION_CASES.append(("rms", lambda: L.RMSNormalization()))


@pytest.mark.parametrize(
    "make", [m for _, m in NORMALIZATION_CASES], ids=[n for n, _ in NORMALIZATION_CASES]
)
def test_normalization_layers(make):
    dense, norm = L.Dense(4, use_bias=False), make()
    inp = keras.Input((5,))
    model = _randomize(keras.Model(inp, L.UnitNormalization()(norm(dense(inp)))))
    expected = [(dense.kernel, (1,))] + [(v, BIASBN) for v in norm.variables]
    assert len(norm.variables) >= 1
    assert _check(model, expected, include="all") == 1


# --- Unknown layers --------------------------------------------------------------------


def test_custom_layer_falls_back_with_one_warning():
    class Scaled(L.Layer):  # a fresh class: warnings are once per class per process
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")
            self.b = self.add_weight(shape=(3,), name="b")

        def call(self, x):
            return x @ self.w + self.b

    first, second = Scaled(name="s1"), Scaled(name="s2")
    inp = keras.Input((4,))
    model = _randomize(keras.Model(inp, second(L.Dense(4, name="mid")(first(inp)) * 0 + inp)))
    with pytest.warns(FilterRuleWarning) as record:
        d = landscape.random_direction(model, seed=0)
        landscape.random_direction(model, seed=1)
        rules = filter_rules(model)
    ours = [str(r.message) for r in record if issubclass(r.category, FilterRuleWarning)]
    assert len(ours) == 1 and "Scaled" in ours[0] and "fallback" in ours[0]
    assert rules["s1/w"].fallback and rules["s1/w"].axes == (1,)
    assert rules["s1/b"].fallback and rules["s1/b"].biasbn
    assert not rules["mid/kernel"].fallback
    for layer in (first, second):  # the fallback: ndim <= 1 -> bias, else the last axis
        np.testing.assert_array_equal(d.arrays[layer.b.path], 0.0)
        w = keras.ops.convert_to_numpy(layer.w.value)
        np.testing.assert_allclose(_norms(d.arrays[layer.w.path], (1,)), _norms(w, (1,)), rtol=1e-5)


def test_unknown_attribute_of_a_known_layer_falls_back():
    class DenseWithGain(L.Dense):
        def build(self, input_shape):
            super().build(input_shape)
            self.gain = self.add_weight(shape=(2, self.units), name="gain")

    layer = DenseWithGain(3, name="dg")
    model, _ = _single(layer, (5,))
    with pytest.warns(FilterRuleWarning, match=r"DenseWithGain\.gain"):
        rules = filter_rules(model)
    assert rules["dg/kernel"].axes == (1,) and not rules["dg/kernel"].fallback
    assert rules["dg/gain"].fallback and rules["dg/gain"].axes == (1,)


def test_normalize_array_refuses_an_unknown_norm():
    with pytest.raises(ValueError, match=r"Unknown norm 'filters'; expected one of"):
        normalize_array(np.ones((2, 2)), np.ones((2, 2)), norm="filters", keep=(1,))


# --- Model structures ------------------------------------------------------------------


def test_nested_functional_with_a_shared_layer():
    shared, pre, head = L.Dense(3, name="shared"), L.Dense(3, name="pre"), L.Dense(2, name="head")
    i = keras.Input((3,))
    inner = keras.Model(i, shared(pre(i)), name="inner")
    x = keras.Input((3,))
    model = _randomize(keras.Model(x, head(shared(inner(x)))))  # shared: inside inner and outside
    assert len(float_variables(model)) == 6
    expected = _kernel_bias(shared, (1,)) + _kernel_bias(pre, (1,)) + _kernel_bias(head, (1,))
    assert _check(model, expected) == 3
    assert filter_rules(model)["shared/kernel"].source == "Dense.kernel"


def _tower(name):
    """A factory with fixed layer names: every tower's variables get the same paths."""
    i = keras.Input((4,))
    return keras.Model(i, L.LayerNormalization(name="ln")(L.Dense(3, name="proj")(i)), name=name)


def _towers():
    a, b = _tower("tower_a"), _tower("tower_b")
    x = keras.Input((4,))
    model = keras.Model(x, L.Concatenate()([a(x), b(x)]))
    # Tower b 100 times larger, so that a direction aligned with the wrong tower is visible.
    _randomize(model, scales={id(v): 100.0 for v in b.variables})
    return model, a, b


def test_two_towers_from_one_factory_have_colliding_paths_and_distinct_keys():
    model, a, b = _towers()
    paths = [v.path for v in model.variables]
    assert paths.count("proj/kernel") == 2  # Keras 3 paths collide
    keys = variable_keys(model)
    assert keys[id(a.get_layer("proj").kernel)] == "tower_a/proj/kernel"
    assert keys[id(b.get_layer("proj").kernel)] == "tower_b/proj/kernel"
    assert len(set(keys.values())) == len(model.variables)
    expected = []
    for tower in (a, b):
        proj, ln = tower.get_layer("proj"), tower.get_layer("ln")
        expected += _kernel_bias(proj, (1,)) + [(ln.gamma, BIASBN), (ln.beta, BIASBN)]
    assert _check(model, expected) == 2
    d = landscape.random_direction(model, seed=0)
    assert len(d.paths) == 8
    with pytest.raises(ValueError, match="Several variables have the path"):
        d.aligned(model.trainable_variables)  # a plain list cannot tell the towers apart


def test_two_towers_one_frozen_align_by_key_not_position():
    model, a, b = _towers()
    a.trainable = False
    d = landscape.random_direction(model, seed=0, include="trainable")
    assert sorted(d.paths) == sorted(
        ["tower_b/proj/kernel", "tower_b/proj/bias", "tower_b/ln/gamma", "tower_b/ln/beta"]
    )
    everything = float_variables(model, "all")
    for v, arr in zip(everything, d.aligned(everything)):
        if any(v is u for u in a.variables):
            np.testing.assert_array_equal(arr, 0.0)
        elif v.path == "proj/kernel":
            w = keras.ops.convert_to_numpy(v.value)
            np.testing.assert_allclose(_norms(arr, (1,)), _norms(w, (1,)), rtol=1e-5)
    rebound = d.rebind(model)
    assert rebound.paths == d.paths


def test_subclassed_model_with_same_named_sublayers():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = L.Conv2D(3, 3, name="conv")
            self.bn = L.BatchNormalization(name="bn")
            self.pool = L.GlobalAveragePooling2D()
            self.first = L.Dense(4, name="d")
            self.second = L.Dense(2, name="d")

        def call(self, x):
            return self.second(self.first(self.pool(self.bn(self.conv(x)))))

    net = Net()
    net(np.zeros((1, 5, 5, 2), np.float32))  # built on the first call
    _randomize(net)
    assert [v.path for v in net.variables].count("net/d/kernel") == 2
    expected = _kernel_bias(net.conv, (3,)) + _kernel_bias(net.first, (1,))
    expected += _kernel_bias(net.second, (1,))
    expected += [(v, BIASBN) for v in net.bn.variables]
    assert _check(net, expected, include="all") == 3
    keys = float_variables(net).paths
    assert len(set(keys)) == len(keys)


def test_direction_round_trip_through_file_keeps_disambiguated_keys(tmp_path):
    model, _, _ = _towers()
    d = landscape.random_direction(model, seed=4)
    d.save(str(tmp_path / "d.h5"))
    e = Direction.load(str(tmp_path / "d.h5"))
    assert e.paths == d.paths
    for x, y in zip(d.aligned(float_variables(model)), e.aligned(float_variables(model))):
        np.testing.assert_array_equal(x, y)
