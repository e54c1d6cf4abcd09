"""A seeded grammar of small Keras models, for the conformance harness (tests/conformance.py).

``draw(seed, profile)`` picks one ``Case`` — an input kind, a body of layers, a normalization,
preprocessing, extras (dropout, pooling, LoRA, regularizers, ``add_loss``), a dtype policy, a
structure (Sequential, Functional, nested, shared, subclassed, multi-input/-output, dict I/O), a
loss with its options, a weighting and a data form — from nothing but its integer seed, so every
case is reproducible from ``(profile, seed)`` and described in one line by ``Case.describe()``.
``Case.build()`` makes the compiled model and its data (Keras's global seed and policy set from
the case); ``Case.scope()`` holds the case's global dtype policy while the checks run.

Profiles: ``"long"`` draws from the whole grammar; ``"ci"`` is the same grammar with fewer
samples (tests/test_conformance.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import zlib
from dataclasses import dataclass, field

import keras
import numpy as np

BACKEND = keras.backend.backend()
ON_TF = BACKEND == "tensorflow"
# Keras reads a tf.data.Dataset on every backend where TensorFlow is installed
HAS_TF = ON_TF or importlib.util.find_spec("tensorflow") is not None


# A float64 case computes in float64 on TensorFlow only: off it Keras computes some ops' 64-bit
# results in 32 bits (keras/src/backend/common/dtypes.py), and JAX without jax_enable_x64 holds
# float64 arrays as float32; the case is still drawn there (users do this), with float32
# tolerances, and the Objective refuses precision="float64" in one sentence.
FLOAT64 = ON_TF

# Body layers by input kind: "vec" (n, 4) floats, "seq" (n, 5, 3), "img" (n, 5, 5, 2),
# "tok" (n, 5) integer tokens (0 = padding), "str" (n, 5) strings, "int" (n, 5) integer ids.
BODIES = {
    "vec": ("dense", "einsum", "prelu", "spectral", "dense2"),
    "seq": (
        "conv1d",
        "conv1d_t",
        "lstm",
        "gru",
        "simplernn",
        "bidirectional",
        "mha",
        "gqa",
        "attention",
    ),
    "img": ("conv2d", "conv2d_t", "depthwise", "separable"),
    "tok": ("embedding", "embedding_rnn", "embedding_mha"),
    "str": ("string_lookup",),
    "int": ("integer_lookup",),
}
KINDS = ("vec", "vec", "seq", "seq", "img", "tok", "str", "int")
# string tensors, and the lookup layers (TensorFlow ops inside the model), exist on TF only
PORTABLE_KINDS = KINDS[:6]
NORMS = (None, "batchnorm", "layernorm", "groupnorm", "rmsnorm", "unitnorm")
POLICIES = ("float32", "float64", "mixed_float16", "mixed_bfloat16", "bf16_layer", "int8")
STRUCTURES = ("sequential", "functional", "nested", "shared", "subclassed", "multi_io", "dict_io")
# loss name -> (units, output activations to draw from, target kind)
LOSSES = {
    "mse": (2, (None, "tanh"), "real"),
    "mae": (2, (None,), "real"),
    "huber": (2, (None,), "real"),
    "log_cosh": (2, (None,), "real"),
    "msle": (2, ("softplus",), "positive"),
    "mape": (2, (None,), "positive"),
    "poisson": (2, ("softplus", "exponential"), "counts"),
    "kld": (3, ("softmax",), "probs"),
    "cosine": (3, (None,), "real"),
    "hinge": (1, (None, "tanh"), "pm1"),
    "squared_hinge": (1, (None, "tanh"), "pm1"),
    "categorical_hinge": (3, (None,), "onehot"),
    "sparse_cce": (3, ("softmax", "logits"), "sparse"),
    "cce": (3, ("softmax", "logits"), "onehot"),
    "bce": (1, ("sigmoid", "logits"), "binary"),
    "binary_focal": (1, ("sigmoid", "logits"), "binary"),
    "categorical_focal": (3, ("softmax", "logits"), "onehot"),
    "generalized_ce": (3, ("softmax",), "sparse"),
    "dice": (2, ("sigmoid",), "binary2"),
    "tversky": (2, ("sigmoid",), "binary2"),
    "circle": (4, (None,), "sparse"),
}
SELF_ATTENTION = ("mha", "gqa", "attention", "embedding_mha")
DATA_FORMS = ("arrays", "dataset", "pydataset", "sparse")
VOCAB = np.array(["the", "cat", "sat", "on", "a", "mat", "dog"], dtype=object)


def _pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


@dataclass
class Case:
    """One generated model: every choice, and how to build it."""

    profile: str
    seed: int
    input_kind: str
    body: str
    norm: str | None
    preprocess: str | None
    extras: tuple[str, ...]
    policy: str
    structure: str
    loss: str
    activation: str | None
    loss_options: dict = field(default_factory=dict)
    weighting: str = "none"
    data_form: str = "arrays"
    per_step: bool = False  # per-timestep outputs (a Keras mask can reach the loss)
    n: int = 16
    batch_size: int = 16

    def describe(self) -> str:
        """The case in one line (what a failure prints)."""
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.loss_options.items()))
        parts = [
            f"[{self.profile}:{self.seed}]",
            f"{self.structure}",
            f"{self.input_kind}->{self.body}",
            f"pre={self.preprocess}" if self.preprocess else "",
            f"norm={self.norm}" if self.norm else "",
            "+".join(self.extras),
            f"policy={self.policy}",
            f"loss={self.loss}({opts})/{self.activation}" + ("/per-step" if self.per_step else ""),
            f"w={self.weighting}",
            f"data={self.data_form}",
            f"n={self.n},bs={self.batch_size}",
        ]
        return " ".join(p for p in parts if p)

    @property
    def float64(self) -> bool:
        return self.policy == "float64"

    @property
    def exact64(self) -> bool:
        """A float64 case whose arithmetic is float64 on this backend (``FLOAT64``: TF)."""
        return self.float64 and FLOAT64

    @property
    def mixed(self) -> bool:
        return self.policy in ("mixed_float16", "mixed_bfloat16", "bf16_layer")

    @contextlib.contextmanager
    def scope(self):
        """The case's global dtype policy (and floatx), restored to float32 after."""
        floatx = "float64" if self.float64 else "float32"
        policy = {"float64": "float64", "mixed_float16": "mixed_float16"}.get(self.policy)
        policy = policy or ("mixed_bfloat16" if self.policy == "mixed_bfloat16" else "float32")
        keras.config.set_floatx(floatx)
        keras.mixed_precision.set_global_policy(policy)
        try:
            yield
        finally:
            keras.mixed_precision.set_global_policy("float32")
            keras.config.set_floatx("float32")

    def build(self):
        """``(model, data)``: the compiled model and a ``Data`` bundle (inside ``scope()``)."""
        return build(self)


def _case_rng(profile: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(profile.encode()), seed])


def _draw_loss(rng, case_kw: dict) -> None:
    loss = _pick(rng, tuple(LOSSES))
    units, activations, target = LOSSES[loss]
    opts: dict = {}
    activation = _pick(rng, activations)
    if activation == "logits":
        opts["from_logits"] = True
    if loss == "sparse_cce" and rng.random() < 0.4:
        opts["ignore_class"] = 0
    if loss in ("cce", "bce") and rng.random() < 0.3:
        opts["label_smoothing"] = 0.1
    case_kw.update(loss=loss, activation=activation, loss_options=opts)


def draw(seed: int, profile: str = "long") -> Case:
    """The case of ``seed`` in ``profile`` (``"long"`` or ``"ci"``): same seed, same case."""
    rng = _case_rng(profile, seed)
    kind = _pick(rng, KINDS if ON_TF else PORTABLE_KINDS)
    body = _pick(rng, BODIES[kind])
    kw: dict = {"profile": profile, "seed": seed, "input_kind": kind, "body": body}
    kw["norm"] = _pick(rng, NORMS) if kind in ("vec", "seq", "img") else None
    if kw["norm"] is None and kind in ("tok",) and rng.random() < 0.3:
        kw["norm"] = "layernorm"
    kw["preprocess"] = (
        _pick(rng, (None, None, "normalization", "rescaling")) if kind in ("vec", "img") else None
    )
    extras = [e for e, p in (("dropout", 0.2), ("pool", 0.3), ("lora", 0.15)) if rng.random() < p]
    extras += [
        e
        for e, p in (("kernel_reg", 0.2), ("activity_reg", 0.1), ("add_loss", 0.1))
        if rng.random() < p
    ]
    kw["extras"] = tuple(extras)
    policy = _pick(rng, POLICIES, p=[0.4, 0.25, 0.08, 0.08, 0.09, 0.1])
    if policy == "int8" and body not in ("dense", "dense2"):
        policy = "float32"  # quantize("int8") is drawn on Dense-only models
    kw["policy"] = policy
    kw["structure"] = _pick(rng, STRUCTURES)
    if kw["structure"] == "sequential" and body in SELF_ATTENTION:
        kw["structure"] = "functional"  # a layer called on (x, x) has no Sequential form
    _draw_loss(rng, kw)
    single = kw["structure"] not in ("multi_io", "dict_io")
    kw["per_step"] = single and kind == "tok" and body != "embedding_mha" and rng.random() < 0.3
    if kw["per_step"] and kw["loss"] in ("circle", "dice", "tversky"):
        kw["per_step"] = False
    kw["weighting"] = _pick(rng, ("none", "none", "sample", "class", "loss_weights"))
    sparse_ok = body in ("dense", "dense2", "prelu", "spectral") and kw["preprocess"] is None
    forms = DATA_FORMS if sparse_ok else DATA_FORMS[:3]
    if not ON_TF:  # tf.SparseTensor only on TensorFlow; tf.data where TensorFlow is installed
        forms = tuple(f for f in forms if f != "sparse" and (f != "dataset" or HAS_TF))
    kw["data_form"] = _pick(rng, forms, p=[0.4, 0.2, 0.2, 0.2] if len(forms) == 4 else None)
    kw["n"] = int(_pick(rng, (8, 12, 16) if profile == "ci" else (8, 16, 24, 32)))
    kw["batch_size"] = int(_pick(rng, (kw["n"], kw["n"] // 2, 5)))
    return Case(**kw)


# ------------------------------------------------------------------------------------ building
L = keras.layers


class AddLoss(L.Layer):
    """Identity that adds 0.01·mean(x²) through ``add_loss``."""

    def call(self, x):
        x2 = keras.ops.square(keras.ops.cast(x, keras.config.floatx()))
        self.add_loss(0.01 * keras.ops.mean(x2))
        return x


class ArrayData(keras.utils.PyDataset):
    """The arrays as a ``keras.utils.PyDataset`` of ``batch_size`` batches."""

    def __init__(self, parts, batch_size):
        super().__init__()
        self.parts, self.batch_size = parts, batch_size
        self.n = len(keras.tree.flatten(parts[0])[0])

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __getitem__(self, i):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return tuple(keras.tree.map_structure(lambda a: a[sl], p) for p in self.parts)


@dataclass
class Data:
    """The case's data as arrays, and in the case's form for the Objective."""

    x: object
    y: object
    sample_weight: np.ndarray | None
    class_weight: dict | None
    form: str
    batch_size: int

    @property
    def parts(self) -> tuple:
        return (
            (self.x, self.y) if self.sample_weight is None else (self.x, self.y, self.sample_weight)
        )

    def for_objective(self):
        if self.form in ("dataset", "sparse"):
            import tensorflow as tf  # drawn only where TensorFlow is installed (draw())
        if self.form == "dataset":
            # tuples: tf.data reads a list of arrays as one (possibly ragged) tensor
            parts = tf.nest.map_structure(lambda t: t, self.parts)
            parts = tuple(tuple(p) if isinstance(p, list) else p for p in parts)
            return tf.data.Dataset.from_tensor_slices(parts).batch(self.batch_size)
        if self.form == "pydataset":
            return ArrayData(self.parts, self.batch_size)
        if self.form == "sparse":
            return (tf.sparse.from_dense(self.x), *self.parts[1:])
        return self.parts

    def evaluate_x(self):
        if self.form != "sparse":
            return self.x
        import tensorflow as tf  # drawn on the TensorFlow backend only (draw())

        return tf.sparse.from_dense(self.x)


def _inputs_for(case: Case, rng) -> tuple[np.ndarray, dict]:
    n, dt = case.n, "float64" if case.float64 else "float32"
    kind = case.input_kind
    if kind == "vec":
        x = rng.normal(size=(n, 4)).astype(dt)
        if case.data_form == "sparse":
            x *= rng.random((n, 4)) < 0.5
        return x, {"shape": (4,), "sparse": case.data_form == "sparse"}
    if kind == "seq":
        return rng.normal(size=(n, 5, 3)).astype(dt), {"shape": (5, 3)}
    if kind == "img":
        return rng.normal(size=(n, 5, 5, 2)).astype(dt), {"shape": (5, 5, 2)}
    if kind == "tok":
        x = rng.integers(1, 8, size=(n, 5))
        x[:, 3:] *= rng.random((n, 2)) < 0.5  # trailing padding (token 0)
        return x.astype("int32"), {"shape": (5,), "dtype": "int32"}
    if kind == "str":
        # a string tensor: Keras's evaluate refuses NumPy object arrays ("Invalid dtype: object")
        import tensorflow as tf  # drawn on the TensorFlow backend only (draw())

        words = VOCAB[rng.integers(0, len(VOCAB), size=(n, 5))].astype(str)
        return tf.constant(words), {"shape": (5,), "dtype": "string"}
    return rng.integers(0, 8, size=(n, 5)).astype("int64"), {"shape": (5,), "dtype": "int64"}


def _body(case: Case, x_train) -> list:
    """The body's steps: ``(layer, "plain" | "self")`` ("self": called as layer(x, x))."""
    b, seqs = case.body, case.per_step or "pool" in case.extras
    act = "tanh"
    table = {
        "dense": [L.Dense(3, activation=act)],
        "dense2": [L.Dense(4, activation="relu"), L.Dense(3, activation=act)],
        "einsum": [L.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c", activation=act)],
        "prelu": [L.Dense(3), L.PReLU(alpha_initializer=keras.initializers.Constant(0.2))],
        "spectral": [L.SpectralNormalization(L.Dense(3, activation=act))],
        "conv1d": [L.Conv1D(3, 2, activation=act)],
        "conv1d_t": [L.Conv1DTranspose(3, 2, activation=act)],
        "lstm": [L.LSTM(3, return_sequences=seqs)],
        "gru": [L.GRU(3, return_sequences=seqs)],
        "simplernn": [L.SimpleRNN(3, return_sequences=seqs)],
        "bidirectional": [L.Bidirectional(L.GRU(2, return_sequences=seqs))],
        "mha": [(L.MultiHeadAttention(num_heads=2, key_dim=2), "self")],
        "gqa": [(L.GroupQueryAttention(2, num_query_heads=2, num_key_value_heads=1), "self")],
        "attention": [L.Dense(3), (L.Attention(use_scale=True, score_mode="dot"), "list")],
        "conv2d": [L.Conv2D(2, 2, activation=act)],
        "conv2d_t": [L.Conv2DTranspose(2, 2, activation=act)],
        "depthwise": [L.DepthwiseConv2D(2, depth_multiplier=2, activation=act)],
        "separable": [L.SeparableConv2D(3, 2, activation=act)],
        "embedding": [L.Embedding(8, 3, mask_zero=bool(case.seed % 2))],
        "embedding_rnn": [L.Embedding(8, 3, mask_zero=True), L.GRU(3, return_sequences=seqs)],
        "embedding_mha": [
            L.Embedding(8, 4, mask_zero=True),
            (L.MultiHeadAttention(num_heads=2, key_dim=2), "self"),
        ],
        "string_lookup": [L.StringLookup(vocabulary=list(VOCAB[:5])), L.Embedding(6, 3)],
        "integer_lookup": [L.IntegerLookup(vocabulary=[1, 2, 3, 4, 5]), L.Embedding(6, 3)],
    }
    steps = [s if isinstance(s, tuple) else (s, "plain") for s in table[b]]
    if case.preprocess == "normalization":
        norm = L.Normalization()
        norm.adapt(x_train)
        steps.insert(0, (norm, "plain"))
    elif case.preprocess == "rescaling":
        steps.insert(0, (L.Rescaling(0.5, offset=0.1), "plain"))
    first = next(s for s, _ in steps if not isinstance(s, L.Normalization | L.Rescaling))
    if "activity_reg" in case.extras:
        first.activity_regularizer = keras.regularizers.L1(0.01)
    return steps


def _norm_layer(case: Case, channels: int):
    return {
        "batchnorm": lambda: L.BatchNormalization(),
        "layernorm": lambda: L.LayerNormalization(),
        "groupnorm": lambda: L.GroupNormalization(groups=1 if channels % 2 else 2),
        "rmsnorm": lambda: L.RMSNormalization(),
        "unitnorm": lambda: L.UnitNormalization(),
    }[case.norm]()


class Trunk:
    """Body steps, then normalization, dropout, add_loss, pooling/flatten (made on first call)."""

    def __init__(self, case: Case, steps: list):
        self.case, self.steps, self.post = case, steps, None

    def _post(self, shape) -> list:
        case, rank, post = self.case, len(shape), []
        if case.norm:
            post.append(_norm_layer(case, int(shape[-1])))
        if "dropout" in case.extras:
            post.append(L.Dropout(0.3, seed=case.seed))
        if "add_loss" in case.extras:
            post.append(AddLoss())
        if rank == 4:
            pool = "pool" in case.extras
            post += [L.MaxPooling2D(2) if pool else L.AveragePooling2D(1), L.Flatten()]
        elif rank == 3 and not case.per_step:
            pool = "pool" in case.extras or case.input_kind in ("tok", "str", "int")
            post.append(L.GlobalAveragePooling1D() if pool else L.Flatten())
        return [(p, "plain") for p in post]

    def __call__(self, x):
        for layer, mode in self.steps:
            x = layer(x, x) if mode == "self" else layer([x, x]) if mode == "list" else layer(x)
        if self.post is None:
            self.post = self._post(x.shape)
        for layer, _ in self.post:
            x = layer(x)
        return x

    @property
    def layers(self) -> list:
        return [layer for layer, _ in self.steps + (self.post or [])]


def _targets(case: Case, rng, n: int) -> np.ndarray:
    units, _, kind = LOSSES[case.loss]
    lead = (n, 5) if case.per_step else (n,)
    dt = "float64" if case.float64 else "float32"
    shape = (*lead, units)
    if kind == "real":
        return rng.normal(size=shape).astype(dt)
    if kind == "positive":
        return (1.0 + np.abs(rng.normal(size=shape))).astype(dt)
    if kind == "counts":
        return rng.poisson(2.0, size=shape).astype(dt)
    if kind == "probs":
        return rng.dirichlet(np.ones(units), size=lead).astype(dt)
    if kind == "pm1":
        return rng.choice([-1.0, 1.0], size=shape).astype(dt)
    labels = rng.integers(0, units, size=lead)
    if kind == "sparse":
        return labels.astype("int32")
    if kind == "onehot":
        return np.eye(units, dtype=dt)[labels]
    return rng.integers(0, 2, size=shape).astype(dt)  # binary, binary2


def loss_object(case: Case) -> keras.losses.Loss:
    """The case's keras Loss."""
    o = case.loss_options
    fl = o.get("from_logits", False)
    return {
        "mse": lambda: keras.losses.MeanSquaredError(),
        "mae": lambda: keras.losses.MeanAbsoluteError(),
        "huber": lambda: keras.losses.Huber(delta=0.5),
        "log_cosh": lambda: keras.losses.LogCosh(),
        "msle": lambda: keras.losses.MeanSquaredLogarithmicError(),
        "mape": lambda: keras.losses.MeanAbsolutePercentageError(),
        "poisson": lambda: keras.losses.Poisson(),
        "kld": lambda: keras.losses.KLDivergence(),
        "cosine": lambda: keras.losses.CosineSimilarity(),
        "hinge": lambda: keras.losses.Hinge(),
        "squared_hinge": lambda: keras.losses.SquaredHinge(),
        "categorical_hinge": lambda: keras.losses.CategoricalHinge(),
        "sparse_cce": lambda: keras.losses.SparseCategoricalCrossentropy(
            from_logits=fl, ignore_class=o.get("ignore_class")
        ),
        "cce": lambda: keras.losses.CategoricalCrossentropy(
            from_logits=fl, label_smoothing=o.get("label_smoothing", 0.0)
        ),
        "bce": lambda: keras.losses.BinaryCrossentropy(
            from_logits=fl, label_smoothing=o.get("label_smoothing", 0.0)
        ),
        "binary_focal": lambda: keras.losses.BinaryFocalCrossentropy(from_logits=fl),
        "categorical_focal": lambda: keras.losses.CategoricalFocalCrossentropy(from_logits=fl),
        "generalized_ce": lambda: keras.losses.CategoricalGeneralizedCrossEntropy(),
        "dice": lambda: keras.losses.Dice(),
        "tversky": lambda: keras.losses.Tversky(),
        "circle": lambda: keras.losses.Circle(),
    }[case.loss]()


class Subclassed(keras.Model):
    """A subclassed model: the trunk, then one head (or the main and aux heads)."""

    def __init__(self, trunk: Trunk, heads: list, extra=None, dict_io=False, **kwargs):
        super().__init__(**kwargs)
        self.trunk, self.heads, self.extra, self.dict_io = trunk, heads, extra, dict_io
        self.trunk_layers = trunk.layers  # a list attribute: Keras tracks these layers

    def call(self, inputs):
        if self.extra is None:
            return self.heads[0](self.trunk(inputs))
        main, side = (inputs["main"], inputs["extra"]) if self.dict_io else inputs
        f = keras.ops.concatenate([self.trunk(main), self.extra(side)], axis=-1)
        outs = [h(f) for h in self.heads]
        return dict(zip(("out", "aux"), outs)) if self.dict_io else outs


def _heads(case: Case) -> list:
    units, _, _ = LOSSES[case.loss]
    act = None if case.activation == "logits" else case.activation
    reg = keras.regularizers.L2(0.01) if "kernel_reg" in case.extras else None
    heads = [L.Dense(units, activation=act, kernel_regularizer=reg, name="out")]
    if case.structure in ("multi_io", "dict_io"):
        heads.append(L.Dense(1, name="aux"))
    return heads


def _model(case: Case, trunk: Trunk, heads: list, spec: dict):
    s = case.structure
    inp = keras.Input(**spec, name="main")
    if s == "sequential":
        trunk(inp)  # makes the post layers
        return keras.Sequential([keras.Input(**spec), *trunk.layers, heads[0]])
    if s == "subclassed":
        trunk(inp)
        multi = len(heads) > 1
        return Subclassed(trunk, heads, L.Dense(2, activation="tanh") if multi else None)
    if s == "nested":
        inner = keras.Model(inp, trunk(inp), name="inner")
        outer_in = keras.Input(**spec)
        return keras.Model(outer_in, heads[0](inner(outer_in)))
    f = trunk(inp)
    if s == "shared":
        shared = L.Dense(int(f.shape[-1]), activation="tanh", name="shared")
        f = shared(shared(f))
    if s in ("functional", "shared"):
        return keras.Model(inp, heads[0](f))
    side = keras.Input(shape=(2,), name="extra")
    f = L.Concatenate()([f, L.Dense(2, activation="tanh")(side)])
    outs = [h(f) for h in heads]
    if s == "dict_io":
        return keras.Model({"main": inp, "extra": side}, {"out": outs[0], "aux": outs[1]})
    return keras.Model([inp, side], outs)


def compile_case(case: Case, model, optimizer=None) -> None:
    """Compile ``model`` with the case's loss(es) and loss weights (Adam unless ``optimizer``)."""
    loss = loss_object(case)
    weights = None
    if case.structure == "dict_io":
        loss = {"out": loss, "aux": keras.losses.MeanSquaredError()}
        weights = {"out": 1.0, "aux": 0.3} if case.weighting == "loss_weights" else None
    elif case.structure == "multi_io":
        loss = [loss, keras.losses.MeanSquaredError()]
        weights = [1.0, 0.3] if case.weighting == "loss_weights" else None
    elif case.weighting == "loss_weights":
        weights = [0.5]
    optimizer = optimizer or keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, loss=loss, loss_weights=weights)
    if isinstance(optimizer, keras.optimizers.Adam):
        model.optimizer.build(model.trainable_variables)  # optimizer state exists: (f) checks it


def all_layers(model) -> list:
    """Every layer inside ``model`` (nested models, wrappers), through public attributes."""
    out, stack = [], list(model.layers)
    while stack:
        layer = stack.pop(0)
        out.append(layer)
        inner = list(getattr(layer, "layers", None) or [])
        inner += [getattr(layer, a, None) for a in ("layer", "forward_layer", "backward_layer")]
        stack += [i for i in inner if isinstance(i, L.Layer) and i not in out]
    return out


def _after_build(case: Case, model, rng) -> None:
    """Moving statistics off their init, LoRA factors non-zero, int8 quantization."""
    for layer in all_layers(model):
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.3)
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))
    if "lora" in case.extras and case.policy != "int8":
        for layer in all_layers(model):
            if type(layer) in (L.Dense, L.EinsumDense, L.Conv1D, L.Conv2D, L.Embedding):
                layer.enable_lora(2)
                b = next(
                    v for v in layer.trainable_variables if "lora" in v.path and "_b" in v.path
                )
                b.assign(rng.normal(size=b.shape).astype(b.dtype) * 0.1)
                break
    if case.policy == "int8":
        model.quantize("int8")


def _data(case: Case, rng, x, model) -> Data:
    n = case.n
    y = _targets(case, rng, n)
    if case.structure in ("multi_io", "dict_io"):
        side = rng.normal(size=(n, 2)).astype("float64" if case.float64 else "float32")
        aux = rng.normal(size=(n, 1)).astype(side.dtype)
        x = {"main": x, "extra": side} if case.structure == "dict_io" else [x, side]
        y = {"out": y, "aux": aux} if case.structure == "dict_io" else [y, aux]
    w = None
    if case.weighting == "sample" or (
        case.weighting == "class" and LOSSES[case.loss][2] not in ("sparse", "binary")
    ):
        w = rng.uniform(0.2, 2.0, size=n).astype("float32")
        w[rng.integers(0, n)] = 0.0
    class_weight = None
    if case.weighting == "class" and w is None and case.structure not in ("multi_io", "dict_io"):
        class_weight = {c: float(rng.uniform(0.3, 2.0)) for c in range(LOSSES[case.loss][0] or 2)}
        class_weight = class_weight if LOSSES[case.loss][2] == "sparse" else {0: 0.5, 1: 1.7}
    return Data(x, y, w, class_weight, case.data_form, case.batch_size)


def build(case: Case):
    """``(model, data)`` for ``case``; call inside ``case.scope()``."""
    keras.utils.set_random_seed(case.seed % (2**31))
    rng = np.random.default_rng([case.seed, 1])
    x, spec = _inputs_for(case, rng)
    trunk = Trunk(case, _body(case, x))
    if case.policy == "bf16_layer":
        layer = next(l for l, _ in trunk.steps if not isinstance(l, L.Normalization | L.Rescaling))
        layer.dtype_policy = keras.DTypePolicy("bfloat16")
    model = _model(case, trunk, _heads(case), spec)
    data = _data(case, rng, x, model)
    if not model.built:
        first = keras.tree.map_structure(lambda a: a[:1], data.x)
        model(first)
    _after_build(case, model, rng)
    compile_case(case, model)
    return model, data
