"""The role of each variable of Keras's built-in layers, from layer semantics: one table.

A tensor's role comes from the layer that owns it and the attribute that holds it, never from
its rank: ``EinsumDense`` (every ``MultiHeadAttention``) has biases of rank 2, and
normalization γ is a vector. The table is shared by ``sam`` (ASAM's T, SAM-ON's selection) and
``landscape.directions`` (filter normalization), which adds its filter axes to it.

Roles:

* ``"kernel"``: weight matrices and convolution kernels (recurrent kernels, LoRA factors);
* ``"embedding"``: embedding tables;
* ``"bias"``: biases, of any rank;
* ``"norm_scale"``: the γ (``gamma``, RMSNormalization's ``scale``) of a normalization layer;
* ``"norm_offset"``: the β (``beta``) of a normalization layer;
* ``"norm_statistics"``: moving and adapted statistics of a normalization layer;
* ``"scale"``: other learned scales (PReLU's alpha, attention scales);
* ``"state"``: bookkeeping that is not a weight (quantization scales, spectral-norm vectors).

``landscape`` knows the three normalization roles as one, ``"normalization"`` (``COARSE``).
"""

from __future__ import annotations

import keras

from sam._compat import all_layers, conv_lstm_cell_class

ROLES = (
    "kernel",
    "embedding",
    "bias",
    "norm_scale",
    "norm_offset",
    "norm_statistics",
    "scale",
    "state",
)
# The coarse role landscape's filter rules use (its biasbn class and its public FilterRule.role).
COARSE = {
    "norm_scale": "normalization",
    "norm_offset": "normalization",
    "norm_statistics": "normalization",
}
# ASAM's T = 1 (Kwon et al. 2021, SamsungLabs/ASAM: T = |w| + η for every parameter whose name
# contains "weight", T = 1 for the others: biases and normalization β).
OFFSET_ROLES = frozenset({"bias", "norm_offset"})
NORMALIZATION_ROLES = frozenset({"norm_scale", "norm_offset"})

_QUANTIZATION_STATE = (  # int8/int4/GPTQ/AWQ scales, float8 bookkeeping (Keras 3.15)
    "kernel_scale",
    "kernel_zero",
    "g_idx",
    "awq_scales",
    "inputs_scale",
    "inputs_amax_history",
    "kernel_amax_history",
    "outputs_grad_scale",
    "outputs_grad_amax_history",
    "embeddings_scale",
    "embeddings_zero",
    "reverse_embeddings_scale",
    "reverse_embeddings_zero",
)
_NORMALIZATION = {
    "gamma": "norm_scale",
    "scale": "norm_scale",  # RMSNormalization (Keras >= 3.9)
    "beta": "norm_offset",
    **dict.fromkeys(
        ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"),
        "norm_statistics",
    ),
}
_KERNEL = {"kernel": "kernel", "bias": "bias", "lora_kernel_a": "kernel", "lora_kernel_b": "kernel"}
_STATE = dict.fromkeys(_QUANTIZATION_STATE, "state")
_EMBEDDING = {
    "embeddings": "embedding",
    "lora_embeddings_a": "embedding",
    "lora_embeddings_b": "kernel",
    **_STATE,
}

# (key, layer class names, {attribute: role}); the first entry whose classes match wins. The key
# names the entry for landscape's filter axes. Subclasses come before their parents.
TABLE: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...] = (
    ("dense", ("Dense",), {**_KERNEL, **_STATE}),
    ("einsum", ("EinsumDense",), {**_KERNEL, **_STATE}),
    ("conv", ("Conv1D", "Conv2D", "Conv3D"), _KERNEL),
    ("conv_transpose", ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), _KERNEL),
    ("depthwise", ("DepthwiseConv1D", "DepthwiseConv2D"), _KERNEL),
    (
        "separable",
        ("SeparableConv1D", "SeparableConv2D"),
        {"depthwise_kernel": "kernel", "pointwise_kernel": "kernel", "bias": "bias"},
    ),
    (
        "reversible_embedding",
        ("ReversibleEmbedding",),
        {**_EMBEDDING, "reverse_embeddings": "kernel"},
    ),
    ("embedding", ("Embedding",), _EMBEDDING),
    (
        "rnn_cell",
        ("LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTMCell"),
        {"kernel": "kernel", "recurrent_kernel": "kernel", "bias": "bias"},
    ),
    (
        "normalization",
        ("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization"),
        _NORMALIZATION,
    ),
    (
        "preprocessing_normalization",
        ("Normalization",),
        dict.fromkeys(("adapt_mean", "adapt_variance"), "norm_statistics"),
    ),  # fmt: skip
    ("spectral_normalization", ("SpectralNormalization",), {"vector_u": "state"}),
    ("prelu", ("PReLU",), {"alpha": "scale"}),
    # AdditiveAttention subclasses Attention.
    ("attention", ("Attention",), dict.fromkeys(("scale", "concat_score_weight"), "scale")),
    ("stft", ("STFTSpectrogram",), dict.fromkeys(("real_kernel", "imag_kernel"), "kernel")),
)


def _layer_class(name: str) -> type | None:
    if name == "ConvLSTMCell":  # built in, but not exported by keras.layers
        return conv_lstm_cell_class()
    return getattr(keras.layers, name, None)


def role_table() -> list[tuple[str, tuple[type, ...], dict[str, str]]]:
    """``TABLE`` with the layer classes this Keras version has (entries without any dropped)."""
    out = []
    for key, names, roles in TABLE:
        classes = tuple(c for c in map(_layer_class, names) if c is not None)
        if classes:
            out.append((key, classes, dict(roles)))
    return out


_RESOLVED = role_table()


def attribute_of(layer, variable) -> str | None:
    """The attribute of ``layer`` that *is* ``variable`` (leading underscores dropped)."""
    for name, value in vars(layer).items():
        if value is variable:
            return name.lstrip("_")
    return None


def layer_role(layer, variable) -> str | None:
    """The role of ``variable`` owned by ``layer`` from the table, or None if it does not know."""
    rules = next((r for _, classes, r in _RESOLVED if isinstance(layer, classes)), None)
    if rules is None:
        return None
    attribute = attribute_of(layer, variable)
    return rules.get(attribute) if attribute is not None else None


def name_role(variable) -> str:
    """The role of a variable from its own name alone (no layer known): a custom loop's rule.

    ``bias`` (or a name ending in ``_bias``) is a bias, ``beta`` a normalization offset,
    ``gamma`` a normalization scale, as is ``scale`` in a layer whose name contains "norm"
    (RMSNormalization); ``moving_*`` are statistics; every other name is a kernel.
    """
    name = variable.name.rsplit("/", 1)[-1]
    if name == "bias" or name.endswith("_bias"):
        return "bias"
    if name == "beta":
        return "norm_offset"
    if name == "gamma":
        return "norm_scale"
    if name == "scale":
        layer = variable.path.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in variable.path else ""
        return "norm_scale" if "norm" in layer.lower() else "scale"
    if name.startswith("moving_"):
        return "norm_statistics"
    return "kernel"


def model_roles(model) -> dict[int, str]:
    """``{id(variable): role}`` for every variable of ``model``, from its innermost owner.

    A variable of a layer the table does not know gets ``name_role``.
    """
    owners: dict[int, object] = {}
    for layer in all_layers(model):
        for v in layer.variables:
            owners[id(v)] = layer  # outer layers come first: the innermost owner wins
    roles = {}
    for v in model.variables:
        layer = owners.get(id(v))
        role = layer_role(layer, v) if layer is not None else None
        roles[id(v)] = role or name_role(v)
    return roles
