"""Directions in weight space: random filter-normalized, interpolation and PCA (trajectory) ones.

A ``Direction`` holds one array per model variable, keyed by ``variable.path`` (made unique when
two variables of a model share a path, see ``variable_keys``). Random directions follow Li et al.
2018: draw d ~ N(0, I), then rescale every *filter* of d to the Frobenius norm of the same filter
of the weights w, so that a step α·d means the same relative change in every layer.

Filter rules by layer semantics
-------------------------------
A tensor's *role* and its *filter axes* (the axes that index one filter, i.e. one output unit)
come from the layer that owns it and from which attribute of that layer it is (the variable
object is compared with ``is`` against the layer's attributes), never from its shape alone.
Keras kernels are ``(..., in, out)``; porting PyTorch's "dim 0" rule would mix filters.

==============================================  =====================================  ==========
layer (and subclasses)                          attribute                              filters
==============================================  =====================================  ==========
Dense                                           kernel ``(in, out)``                   last axis
EinsumDense (MultiHeadAttention,                kernel                                 kernel
GroupedQueryAttention projections)                                                     axes that
                                                                                       appear in
                                                                                       the output
Conv1D/2D/3D                                    kernel ``(k..., in, out)``             last axis
Conv1D/2D/3DTranspose                           kernel ``(k..., out, in)``             axis −2
DepthwiseConv1D/2D                              kernel ``(k..., in, multiplier)``      last two
SeparableConv1D/2D                              depthwise_kernel / pointwise_kernel    last two /
                                                                                       last axis
Embedding                                       embeddings ``(vocab, dim)``            axis 0
ReversibleEmbedding                             reverse_embeddings ``(dim, vocab)``    last axis
LSTMCell/GRUCell/SimpleRNNCell/ConvLSTMCell     kernel, recurrent_kernel               last axis
(LSTM, GRU, SimpleRNN, ConvLSTMnD,
Bidirectional, RNN, StackedRNNCells)
STFTSpectrogram                                 real_kernel, imag_kernel               last axis
Dense/EinsumDense/ConvND/Embedding with LoRA    lora_*_a / lora_*_b                    as the host
                                                                                       kernel /
                                                                                       last axis
==============================================  =====================================  ==========

* EinsumDense: the kernel's axes whose letter appears in the output of ``layer.equation`` are
  not summed over, so they index output units: for MultiHeadAttention's query/key/value
  (``"abc,cde->abde"``, kernel ``(d_model, heads, key_dim)``) that is (head, unit) = axes
  (1, 2); for its output projection (``"abcd,cde->abe"``, kernel ``(heads, key_dim,
  d_model)``) the last axis. Ellipsis forms (``"...b,bc->...c"``) are handled. A kernel with
  every axis summed is one filter.
* RNN cells hold the gates side by side: kernel ``(in, units·gates)`` and recurrent kernel
  ``(units, units·gates)``; each column is one unit of one gate, so a filter is one column
  (last axis).
* The **biasbn class** (roles ``"bias"``, ``"normalization"``, ``"scale"``, ``"state"``) is
  zeroed under ``ignore="biasbn"`` and otherwise normalized as a single filter (the whole tensor,
  as loss-landscape does for its ndim ≤ 1 tensors). It holds every bias of any rank (the 2-D
  ``(heads, key_dim)`` biases of attention projections, GRU's ``(2, 3·units)`` bias with
  ``reset_after=True``), the parameters and statistics of BatchNormalization,
  LayerNormalization, GroupNormalization, RMSNormalization and the preprocessing Normalization
  layer (``"normalization"``), PReLU's alpha and the Attention/AdditiveAttention scales
  (``"scale"``), and bookkeeping state (SpectralNormalization's ``vector_u``, quantization
  scales and float8 histories: ``"state"``).
* **Fallback** for a layer class the rules do not know (a custom layer using ``add_weight``), an
  attribute a known layer class does not have in the rules, or a variable no layer owns: a
  tensor with ndim ≤ 1 is a bias (biasbn class), otherwise its filters are along the last axis.
  A ``FilterRuleWarning`` names the layer class once per class (once per class and attribute
  for a known class); ``filter_rules(model)`` shows which rule each variable got.

References:
    Li et al., Visualizing the Loss Landscape of Neural Nets, https://arxiv.org/abs/1712.09913
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
import numpy as np

from landscape import _checks, io
from landscape._checks import Ignore, Include, Norm
from sam import _compat, _roles

logger = logging.getLogger("landscape")

Role = Literal["kernel", "embedding", "bias", "normalization", "scale", "state"]

NORMS = _checks.options(Norm)
IGNORES = _checks.options(Ignore)
INCLUDES = _checks.options(Include)
ROLES = ("kernel", "embedding", "bias", "normalization", "scale", "state")
BIASBN_ROLES = frozenset({"bias", "normalization", "scale", "state"})
NORM_EPS = 1e-10  # loss-landscape's guard against a zero-norm random filter


class FilterRuleWarning(UserWarning):
    """A variable's filters were guessed from its shape (the fallback rule)."""


def _check_choice(name: str, value: Any, mode: Any) -> str:
    """``_checks.choice``, with None meaning "none" where the mode has it."""
    if value is None and "none" in _checks.options(mode):
        return "none"
    return _checks.choice(name, value, mode)


def _text_bytes(a: np.ndarray) -> Iterator[bytes]:
    """The contents of a str, bytes or object array, entry by entry, each length-prefixed
    (an object array's memory holds pointers, which differ from run to run)."""
    for item in a.ravel(order="C"):
        if isinstance(item, bytes | np.bytes_):
            raw = b"b" + bytes(item)
        elif isinstance(item, str):
            raw = b"s" + item.encode("utf-8", "surrogatepass")
        else:
            raw = b"r" + repr(item).encode("utf-8", "surrogatepass")
        yield f"{len(raw)}:".encode() + raw


def fingerprint_arrays(arrays: Iterable[np.ndarray]) -> str:
    """A SHA-256 hex digest of the shapes, dtypes and contents of ``arrays`` in order.

    Numeric arrays are hashed by their bytes; str, bytes and object arrays (text inputs) by
    their encoded entries, so the same strings always give the same digest.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.kind in "OSU":
            h.update(f"text{a.shape};".encode())
            for chunk in _text_bytes(a):
                h.update(chunk)
            continue
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint_directions(directions: Iterable[Direction]) -> str:
    """A SHA-256 hex digest of the directions' fingerprints in order (a surface file's
    ``directions_fingerprint``, which a resumed run and every surface worker check)."""
    h = hashlib.sha256()
    for d in directions:
        h.update(d.fingerprint().encode())
    return h.hexdigest()


# --- Which layer owns which variable, and the variables' keys.


def _layer_tree(model: keras.Model) -> list[tuple[keras.layers.Layer, tuple[str, ...]]]:
    """Every layer reachable from ``model`` once, post-order (sub-layers before their parent),
    each with the names of the layers leading to it from ``model`` (its scope)."""
    out: list[tuple[keras.layers.Layer, tuple[str, ...]]] = []
    seen: set[int] = set()

    def visit(layer, scope):
        seen.add(id(layer))
        for sub in _compat.direct_sublayers(layer):
            if id(sub) not in seen:
                visit(sub, (*scope, sub.name))
        out.append((layer, scope))

    visit(model, ())
    return out


def variable_owners(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """Map ``id(variable)`` to the innermost layer that owns it, for every variable of ``model``.

    A layer shared by several parents (or used twice) owns its variables itself.
    """
    owners: dict[int, keras.layers.Layer] = {}
    for layer, _ in _layer_tree(model):  # innermost first: the first owner found wins
        for v in layer.variables:
            owners.setdefault(id(v), layer)
    return owners


def variable_keys(model: keras.Model) -> dict[int, str]:
    """Map ``id(variable)`` to the key of each of ``model``'s variables in a ``Direction``.

    The key is ``variable.path`` whenever that is unique in the model. Keras 3 builds a path from
    the name scopes active when the variable was created, so it can collide: two sub-models made
    by one factory function with fixed layer names (both ``"proj/kernel"``), or two sub-layers of
    a subclassed model given the same name. Colliding variables are keyed instead by the names
    of the layers leading to their owner plus the variable's name (``"tower_a/proj/kernel"``),
    and by ``"#1"``, ``"#2"``, … in model order if that is still ambiguous.

    Args:
        model: A built Keras model (or layer).

    Returns:
        ``{id(variable): key}`` over ``model.variables``; the keys are unique.
    """
    variables = model.variables
    counts = Counter(v.path for v in variables)
    keys = {id(v): v.path for v in variables if counts[v.path] == 1}
    if len(keys) == len(variables):
        return keys
    scopes: dict[int, tuple[str, ...]] = {}
    for layer, scope in _layer_tree(model):
        for v in layer.variables:
            scopes.setdefault(id(v), scope)
    candidates: dict[str, list] = defaultdict(list)
    for v in variables:
        if id(v) not in keys:
            candidates["/".join((*scopes.get(id(v), ()), v.name))].append(v)
    taken = set(keys.values())
    for candidate, group in candidates.items():
        if len(group) == 1 and candidate not in taken:
            keys[id(group[0])] = candidate
            taken.add(candidate)
            continue
        for i, v in enumerate(group, start=1):
            key, n = f"{candidate}#{i}", i
            while key in taken:  # only if a real path already looks like "...#i"
                n += len(group)
                key = f"{candidate}#{n}"
            keys[id(v)] = key
            taken.add(key)
    return keys


class ModelVariables(list):
    """A list of a model's variables that also carries their ``Direction`` keys in ``paths``.

    Returned by ``float_variables``; ``Direction.aligned`` uses ``paths`` so that variables whose
    ``variable.path`` collides still align correctly. A slice is a plain list.
    """

    def __init__(self, variables: Iterable = (), paths: Iterable[str] = ()):
        super().__init__(variables)
        self.paths: list[str] = list(paths)


def _keys_of(variables: Sequence) -> list[str]:
    """The ``Direction`` keys of ``variables``: ``ModelVariables.paths`` or the unique paths."""
    if isinstance(variables, ModelVariables) and len(variables.paths) == len(variables):
        return variables.paths
    keys = [v.path for v in variables]
    duplicated = [p for p, n in Counter(keys).items() if n > 1]
    if duplicated:
        raise ValueError(
            f"Several variables have the path {duplicated[0]!r}; get them with "
            "landscape.directions.float_variables(model), whose keys are unique "
            "(see variable_keys)."
        )
    return keys


def is_float_variable(variable) -> bool:
    """Whether ``variable`` holds floating-point values by Keras's own dtype rules.

    ``bfloat16`` counts (NumPy calls it a void type, so ``np.dtype(...).kind`` would drop it);
    integer and boolean state (a dropout layer's seed, quantized int8 kernels) does not.
    """
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(variable.dtype))


def storage_dtype(dtype) -> np.dtype:
    """The NumPy dtype a direction holds for a variable (or a variable's ``dtype``).

    The variable's own dtype, except ``bfloat16`` (which NumPy and HDF5 do not have): float32,
    which holds every bfloat16 value exactly, and differences of them (w₁ − w₀) too.
    """
    name = keras.backend.standardize_dtype(getattr(dtype, "dtype", dtype))
    return np.dtype(np.float32) if name == "bfloat16" else np.dtype(name)


def float_variables(model: keras.Model, include: Include = "all") -> ModelVariables:
    """The model's floating-point variables (``"trainable"`` or ``"all"``), in model order.

    Integer state such as a dropout layer's seed is never part of a direction. The result is a
    list whose ``paths`` attribute holds each variable's key (see ``variable_keys``).
    """
    include = _check_choice("include", include, Include)
    variables = model.trainable_variables if include == "trainable" else model.variables
    variables = [v for v in variables if is_float_variable(v)]
    keys = variable_keys(model)
    return ModelVariables(variables, [keys.get(id(v), v.path) for v in variables])


# --- Filter rules.

AxesRule = Callable[[keras.layers.Layer, int], "tuple[int, ...] | None"]


def _last(layer, ndim: int) -> tuple[int, ...]:
    return (ndim - 1,)


def _second_last(layer, ndim: int) -> tuple[int, ...]:
    return (ndim - 2,)


def _last_two(layer, ndim: int) -> tuple[int, ...]:
    return (ndim - 2, ndim - 1)


def _first(layer, ndim: int) -> tuple[int, ...]:
    return (0,)


def einsum_filter_axes(equation: str, ndim: int) -> tuple[int, ...] | None:
    """Filter axes of an ``EinsumDense`` kernel: its axes whose letter appears in the output.

    Args:
        equation: The layer's equation, e.g. ``"abc,cde->abde"`` or ``"...b,bc->...c"``.
        ndim: The kernel's rank.

    Returns:
        The kernel axes that are not summed over (e.g. ``(1, 2)`` for ``"abc,cde->abde"``), or
        None when every axis is summed (the kernel is one filter).

    Raises:
        ValueError: if the equation is not ``"<input>,<kernel>-><output>"`` with a kernel of
            ``ndim`` letters.
    """
    spec = equation.replace(" ", "")
    lhs, arrow, output = spec.partition("->")
    operands = lhs.split(",")
    if not arrow or len(operands) != 2:
        raise ValueError(f"Cannot parse the EinsumDense equation {equation!r}.")
    kernel = operands[1]
    if "." in kernel or len(kernel) != ndim or not kernel.isalpha():
        raise ValueError(
            f"The kernel spec {kernel!r} of equation {equation!r} does not name {ndim} axes."
        )
    kept = tuple(i for i, letter in enumerate(kernel) if letter in output)
    return kept or None


def _einsum(layer, ndim: int) -> tuple[int, ...] | None:
    return einsum_filter_axes(layer.equation, ndim)


# The filter axes of the roles "kernel" and "embedding", per entry of sam._roles.TABLE (the
# roles themselves come from that one table, shared with SAM).
_AXES: dict[str, dict[str, AxesRule]] = {
    "dense": dict.fromkeys(("kernel", "lora_kernel_a"), _last) | {"lora_kernel_b": _last},
    "einsum": dict.fromkeys(("kernel", "lora_kernel_a"), _einsum) | {"lora_kernel_b": _last},
    "conv": dict.fromkeys(("kernel", "lora_kernel_a", "lora_kernel_b"), _last),
    "conv_transpose": dict.fromkeys(("kernel", "lora_kernel_a"), _second_last)
    | {"lora_kernel_b": _last},
    "depthwise": dict.fromkeys(("kernel", "lora_kernel_a"), _last_two) | {"lora_kernel_b": _last},
    "separable": {"depthwise_kernel": _last_two, "pointwise_kernel": _last},
    "reversible_embedding": dict.fromkeys(("embeddings", "lora_embeddings_a"), _first)
    | dict.fromkeys(("lora_embeddings_b", "reverse_embeddings"), _last),
    "embedding": dict.fromkeys(("embeddings", "lora_embeddings_a"), _first)
    | {"lora_embeddings_b": _last},
    "rnn_cell": dict.fromkeys(("kernel", "recurrent_kernel"), _last),
    "stft": dict.fromkeys(("real_kernel", "imag_kernel"), _last),
}


def _rule_table() -> list[tuple[tuple[type, ...], dict[str, tuple[Role, AxesRule | None]]]]:
    """(layer classes, {attribute: (role, axes rule)}); the first matching class wins.

    The roles are ``sam._roles``'s (normalization γ, β and statistics as one "normalization").
    """
    table = []
    for key, classes, roles in _roles.role_table():
        axes = _AXES.get(key, {})
        table.append(
            (
                classes,
                {
                    attribute: (
                        _roles.COARSE.get(role, role),
                        axes[attribute] if role in ("kernel", "embedding") else None,
                    )
                    for attribute, role in roles.items()
                },
            )
        )
    return table


_RULES = _rule_table()
_WARNED: weakref.WeakKeyDictionary[type, set[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FilterRule:
    """How one variable is normalized: its role and the axes that index its filters.

    Attributes:
        role: One of ``ROLES``: ``"kernel"`` and ``"embedding"`` are filter-normalized along
            ``axes``; ``"bias"``, ``"normalization"``, ``"scale"`` and ``"state"`` form the
            biasbn class (``biasbn`` is True).
        axes: Non-negative axes indexing one filter, or None: the whole tensor is one filter
            (always None for the biasbn class).
        source: Where the rule came from, e.g. ``"EinsumDense.kernel"`` or
            ``"fallback: MyLayer.w"``.
        fallback: True if the rule was guessed from the shape (see the module docstring).
    """

    role: Role
    axes: tuple[int, ...] | None
    source: str
    fallback: bool = False

    @property
    def biasbn(self) -> bool:
        """Whether ``ignore="biasbn"`` zeroes this variable."""
        return self.role in BIASBN_ROLES


def _attribute_of(layer: keras.layers.Layer, variable) -> str | None:
    """The attribute of ``layer`` that *is* ``variable`` (leading underscores dropped)."""
    for name, value in vars(layer).items():
        if value is variable:
            return name.lstrip("_")
    return None


def _warn_once(cls: type, attribute: str, message: str) -> None:
    warned = _WARNED.setdefault(cls, set())
    if attribute not in warned:
        warned.add(attribute)
        warnings.warn(message, FilterRuleWarning, stacklevel=4)


def _fallback_rule(variable, source: str) -> FilterRule:
    ndim = len(variable.shape)
    if ndim <= 1:
        return FilterRule("bias", None, f"fallback: {source}", fallback=True)
    return FilterRule("kernel", (ndim - 1,), f"fallback: {source}", fallback=True)


_FALLBACK_TEXT = (
    "tensors with ndim <= 1 are treated as biases (zeroed under ignore='biasbn'), others have "
    "their filters along the last axis. Check landscape.directions.filter_rules(model)."
)


def filter_rule(layer: keras.layers.Layer | None, variable) -> FilterRule:
    """The ``FilterRule`` of ``variable``, owned by ``layer`` (see the module docstring's table).

    Args:
        layer: The innermost layer that owns the variable (``variable_owners``), or None.
        variable: A Keras variable.

    Returns:
        The role and filter axes from the layer's class and the attribute that is the variable;
        the fallback shape rule (ndim ≤ 1 → bias, else the last axis) for an unknown layer class
        or attribute (with a ``FilterRuleWarning`` once per class, or class and attribute) and
        for a variable without an owner.
    """
    ndim = len(variable.shape)
    if layer is None:
        logger.debug("Variable %s has no owning layer: fallback filter rule.", variable.path)
        return _fallback_rule(variable, variable.path)
    cls = type(layer)
    attributes = next((rules for classes, rules in _RULES if isinstance(layer, classes)), None)
    if attributes is None:
        _warn_once(
            cls,
            "",
            f"Layer class {cls.__module__}.{cls.__qualname__} (layer {layer.name!r}) has no "
            f"filter rule; its variables use the fallback rule: {_FALLBACK_TEXT}",
        )
        return _fallback_rule(variable, f"{cls.__name__}.{variable.name}")
    attribute = _attribute_of(layer, variable)
    entry = attributes.get(attribute) if attribute is not None else None
    if entry is None:
        name = attribute or variable.name
        _warn_once(
            cls,
            name,
            f"Variable {variable.path!r} ({cls.__name__}.{name}) has no filter rule; it uses "
            f"the fallback rule: {_FALLBACK_TEXT}",
        )
        return _fallback_rule(variable, f"{cls.__name__}.{name}")
    role, axes_rule = entry
    source = f"{cls.__name__}.{attribute}"
    if role in BIASBN_ROLES:
        return FilterRule(role, None, source)
    try:
        axes = axes_rule(layer, ndim)
    except ValueError as err:
        _warn_once(cls, attribute, f"{err} Variable {variable.path!r}: {_FALLBACK_TEXT}")
        return _fallback_rule(variable, source)
    return FilterRule(role, None if axes is None else tuple(sorted(axes)), source)


def filter_axes(layer: keras.layers.Layer | None, variable) -> tuple[int, ...] | None:
    """The axes of ``variable`` that index its filters (output units), or None for one filter.

    The rule comes from the layer's class and which of its attributes the variable is (see the
    module docstring's table); a layer class or attribute the rules do not know, or a variable
    without an owner, falls back to the shape: ndim ≤ 1 → None (a bias), otherwise the last
    axis, with a ``FilterRuleWarning`` naming the layer class once.

    Args:
        layer: The layer that owns the variable (None if unknown); see ``variable_owners``.
        variable: A Keras variable.

    Returns:
        Non-negative axes: ``(ndim-1,)`` for Dense/ConvND kernels and RNN kernels and recurrent
        kernels (one column per unit of one gate), ``(ndim-2,)`` for ConvNDTranspose kernels,
        ``(ndim-2, ndim-1)`` for depthwise kernels (input channel × depth multiplier), the
        kernel axes that appear in the output of an EinsumDense equation (``(1, 2)``, i.e.
        (head, unit), for MultiHeadAttention's query/key/value), ``(0,)`` for Embedding tables;
        None for the biasbn class (biases of any rank, normalization parameters, moving
        statistics), normalized as one filter.
    """
    return filter_rule(layer, variable).axes


def filter_rules(model: keras.Model, *, include: Include = "all") -> dict[str, FilterRule]:
    """The filter rule of each of ``model``'s floating-point variables.

    Args:
        model: A built Keras model.
        include: ``"all"`` or ``"trainable"`` variables. Defaults to ``"all"``.

    Returns:
        ``{key: FilterRule}`` in model order, keyed as ``Direction`` keys its arrays (see
        ``variable_keys``).

    Example:
        >>> for key, rule in filter_rules(model).items():
        ...     print(key, rule.role, rule.axes, rule.source)
        multi_head_attention/query/kernel kernel (1, 2) EinsumDense.kernel
        multi_head_attention/query/bias bias None EinsumDense.bias
    """
    variables = float_variables(model, include)
    owners = variable_owners(model)
    return {k: filter_rule(owners.get(id(v)), v) for k, v in zip(variables.paths, variables)}


def _group_norms(a: np.ndarray, keep: tuple[int, ...] | None) -> np.ndarray:
    """Frobenius norm of each filter of ``a``, broadcastable to ``a``."""
    if keep is None:
        return np.sqrt(np.sum(a * a, keepdims=True))
    reduce = tuple(i for i in range(a.ndim) if i not in keep)
    return np.sqrt(np.sum(a * a, axis=reduce, keepdims=True))


def normalize_array(
    d: np.ndarray,
    w: np.ndarray,
    *,
    norm: Norm,
    keep: tuple[int, ...] | None,
) -> np.ndarray:
    """Rescale one direction tensor ``d`` against its weight tensor ``w`` (float64 maths).

    Args:
        d: The direction tensor.
        w: The weight tensor of the same shape.
        norm: ``"filter"``, ``"layer"``, ``"weight"`` or ``"none"`` (see ``random_direction``).
        keep: The filter axes (``filter_axes``); None makes the whole tensor one filter.

    Raises:
        ValueError: for an unknown ``norm``.
    """
    norm = _check_choice("norm", norm, Norm)
    d = np.asarray(d, np.float64)
    w = np.asarray(w, np.float64)
    if norm == "filter":
        return d * (_group_norms(w, keep) / (_group_norms(d, keep) + NORM_EPS))
    if norm == "layer":
        return d * (_group_norms(w, None) / (_group_norms(d, None) + NORM_EPS))
    if norm == "weight":
        return d * w
    return d


@dataclass(frozen=True, eq=False)
class Direction:
    """A direction in weight space: one array per variable, keyed by ``variable.path``.

    Keys are the variables' paths, made unique where two variables of a model share a path
    (``variable_keys``); ``float_variables(model).paths`` lists them.

    Supports ``d1 + d2``, ``d1 - d2``, ``a * d``, ``d / a``, ``-d``, ``d1.dot(d2)`` and
    ``d.norm()`` (both in float64). Variables of the model that a direction does not name are
    treated as zero (e.g. BatchNorm moving statistics of an ``include="trainable"`` direction).

    Attributes:
        arrays: ``{key: array}`` in model order (the key is ``variable.path`` unless it
            collides, see ``variable_keys``).
        metadata: How it was made (``kind``, ``norm``, ``ignore``, ``seed``, ``include``).
    """

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return list(self.arrays)

    def _binary(self, other: Direction, op) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        if list(other.arrays) != list(self.arrays):
            raise ValueError("Directions cover different variables; they cannot be combined.")
        return Direction({k: op(a, other.arrays[k]) for k, a in self.arrays.items()})

    def __add__(self, other: Direction) -> Direction:
        return self._binary(other, np.add)

    def __sub__(self, other: Direction) -> Direction:
        return self._binary(other, np.subtract)

    def __mul__(self, scale: float) -> Direction:
        if not np.isscalar(scale):
            return NotImplemented
        return Direction({k: (a * scale).astype(a.dtype) for k, a in self.arrays.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> Direction:
        return self * (1.0 / scale)

    def __neg__(self) -> Direction:
        return self * -1.0

    def dot(self, other: Direction) -> float:
        """Inner product ⟨self, other⟩ over all shared variables, in float64."""
        total = 0.0
        for k, a in self.arrays.items():
            if k in other.arrays:
                total += float(np.vdot(a.astype(np.float64), other.arrays[k].astype(np.float64)))
        return total

    def norm(self) -> float:
        """Euclidean norm over all variables, in float64."""
        return float(np.sqrt(self.dot(self)))

    def fingerprint(self) -> str:
        """SHA-256 of the arrays (shapes, dtypes, bytes; in order, paths excluded)."""
        return fingerprint_arrays(self.arrays.values())

    def aligned(self, variables: Sequence) -> list[np.ndarray]:
        """Arrays aligned to ``variables`` by key (zeros where not named).

        Args:
            variables: Variables as returned by ``float_variables`` (whose ``paths`` are their
                keys), or any sequence of variables with distinct paths.

        Raises:
            ValueError: if the direction names a key that is not among ``variables``, a shape
                differs, or ``variables`` is a plain list in which two variables share a path.
        """
        keys = _keys_of(variables)
        known = set(keys)
        unknown = [p for p in self.arrays if p not in known]
        if unknown:
            raise ValueError(
                f"Direction names variables the model does not have: {unknown[:3]}; "
                "use Direction.rebind(model) for a rebuilt model with other layer names."
            )
        out = []
        for key, v in zip(keys, variables):
            a = self.arrays.get(key)
            if a is None:
                out.append(np.zeros(tuple(v.shape), storage_dtype(v.dtype)))
                continue
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(
                    f"Direction array for {key} has shape {a.shape}; the variable has "
                    f"shape {tuple(v.shape)}."
                )
            out.append(a)
        return out

    def rebind(self, model: keras.Model) -> Direction:
        """The same arrays keyed by the paths of ``model``'s variables, matched by position.

        Useful when the model was rebuilt with different layer names (e.g. ``dense_1``).
        """
        shapes = [tuple(a.shape) for a in self.arrays.values()]
        for start in (float_variables(model, "all"), float_variables(model, "trainable")):
            if [tuple(v.shape) for v in start] == shapes:
                return Direction(dict(zip(start.paths, self.arrays.values())), dict(self.metadata))
        raise ValueError("Direction and model variables differ in number or shapes.")

    def save(self, path: str, *, name: str = "direction") -> None:
        """Save to an HDF5 file (group ``name``); see ``landscape.io``."""
        io.save_directions(path, {name: self})

    @classmethod
    def load(cls, path: str, *, name: str = "direction") -> Direction:
        """Load a direction saved by ``save`` (or from a surface file's ``directions/`` group)."""
        return cls(*io.read_directions(path)[name])


def variable_values(variables: Sequence) -> list[np.ndarray]:
    """The variables' values as NumPy arrays in their ``storage_dtype`` (exact)."""
    return [
        np.asarray(keras.ops.convert_to_numpy(v.value)).astype(storage_dtype(v.dtype), copy=False)
        for v in variables
    ]


def orthogonalize(d: Direction, against: Direction) -> Direction:
    """Gram–Schmidt: ``d − (⟨d, u⟩ / ⟨u, u⟩) u`` so that the result is orthogonal to ``against``."""
    uu = against.dot(against)
    if uu == 0.0:
        return d
    coef = d.dot(against) / uu
    arrays = {}
    for k, a in d.arrays.items():
        u = against.arrays.get(k)
        arrays[k] = a if u is None else (a - coef * u.astype(np.float64)).astype(a.dtype)
    return Direction(arrays, {**d.metadata, "orthogonal_to": against.fingerprint()})


def random_direction(
    model: keras.Model,
    *,
    norm: Norm = "filter",
    ignore: Ignore | None = "biasbn",
    seed: int | None = None,
    include: Include = "trainable",
    orthogonal_to: Direction | None = None,
) -> Direction:
    """A Gaussian random direction, normalized against the model's weights.

    Args:
        model: A built Keras model; its current weights are w.
        norm: ``"filter"`` (each filter of d gets the norm of that filter of w), ``"layer"``
            (each tensor of d gets the norm of its tensor of w), ``"weight"`` (d ← d ⊙ w) or
            ``"none"``. Defaults to ``"filter"``.
        ignore: ``"biasbn"`` zeroes the biasbn class, by layer semantics (biases of any rank,
            normalization γ, β and moving statistics; see ``filter_rules``); ``"none"`` (or
            None) normalizes each such tensor as a single filter. Defaults to ``"biasbn"``.
        seed: Seed of ``numpy.random.default_rng``; equal seeds give identical directions.
            Defaults to None (fresh entropy).
        include: ``"trainable"`` moves trainable variables only; ``"all"`` also moves
            non-trainable floating-point state such as BatchNorm moving statistics
            (loss-landscape's "states"). Defaults to ``"trainable"``.
        orthogonal_to: If given, the result is orthogonalized against this direction after
            normalization (which then holds only approximately). Defaults to None.

    Returns:
        A ``Direction`` in the dtypes of the variables.

    Example:
        >>> d1 = random_direction(model, seed=0)
        >>> d2 = random_direction(model, seed=1, orthogonal_to=d1)
    """
    norm = _check_choice("norm", norm, Norm)
    ignore = _check_choice("ignore", ignore, Ignore)
    include = _check_choice("include", include, Include)
    variables = float_variables(model, include)
    if not variables:
        raise ValueError("Argument `model` has no floating-point variables; is it built?")
    owners = variable_owners(model)
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, v, w in zip(variables.paths, variables, variable_values(variables)):
        rule = filter_rule(owners.get(id(v)), v)
        d = rng.standard_normal(w.shape)  # drawn for every variable: seeds stay comparable
        if ignore == "biasbn" and rule.biasbn:
            d = np.zeros_like(d)
        else:
            d = normalize_array(d, w, norm=norm, keep=rule.axes)
        arrays[key] = d.astype(w.dtype)
    if not any(np.any(a != 0) for a in arrays.values()):
        raise ValueError(
            f"Argument `model`: the random direction (include={include!r}, ignore={ignore!r}) "
            "is zero on every variable, so a surface along it would be flat: what it may move "
            "is ignored (biases, normalization), quantized (int8 kernels), frozen, or zero "
            "itself (a reloaded LoRA model's factors; filter normalization scales to them)."
        )
    out = Direction(
        arrays,
        {"kind": "random", "norm": norm, "ignore": ignore, "seed": seed, "include": include},
    )
    if orthogonal_to is not None:
        out = orthogonalize(out, orthogonal_to)
    return out


def interpolation_direction(
    model_a: keras.Model, model_b: keras.Model, *, include: Include = "all"
) -> Direction:
    """d = w_b − w_a, keyed by ``model_a``'s paths: α = 0 is model a, α = 1 is model b.

    Variables are matched by position (two separately built models often differ in layer
    names) and must agree in shape.

    Args:
        model_a: The model at α = 0; evaluate the direction with an ``Objective`` of this model.
        model_b: The model at α = 1, of the same architecture.
        include: ``"all"`` (default) also interpolates BatchNorm moving statistics;
            ``"trainable"`` only trainable weights. Defaults to ``"all"``.

    Returns:
        A ``Direction`` with ``metadata["kind"] == "interpolation"``.
    """
    include = _check_choice("include", include, Include)
    va, vb = float_variables(model_a, include), float_variables(model_b, include)
    if [tuple(v.shape) for v in va] != [tuple(v.shape) for v in vb]:
        raise ValueError("Arguments `model_a` and `model_b` differ in variables or shapes.")
    arrays = {
        key: (b.astype(np.float64) - a.astype(np.float64)).astype(a.dtype)
        for key, a, b in zip(va.paths, variable_values(va), variable_values(vb))
    }
    return Direction(arrays, {"kind": "interpolation", "include": include})


@dataclass(frozen=True)
class PCAResult:
    """Top principal directions of a training trajectory.

    Attributes:
        directions: The two unit-norm principal directions (``Direction``), keyed by the final
            model's paths.
        explained_variance_ratio: Fraction of the variance of the trajectory each explains.
        coordinates: ``(n_checkpoints, 2)`` projections of ``w_t − w_final`` on the directions;
            the final model sits at (0, 0).
    """

    directions: tuple[Direction, Direction]
    explained_variance_ratio: np.ndarray
    coordinates: np.ndarray


def _checkpoint_arrays(
    checkpoint: keras.Model | Mapping[str, np.ndarray] | Sequence[np.ndarray],
    final: keras.Model,
    variables: list,
) -> list[np.ndarray]:
    if isinstance(checkpoint, keras.Model):
        other = float_variables(checkpoint, "all")
        by_pos = dict(zip([id(v) for v in float_variables(final, "all")], variable_values(other)))
        arrays = [by_pos[id(v)] for v in variables]
    elif isinstance(checkpoint, Direction):
        arrays = checkpoint.aligned(variables)
    elif isinstance(checkpoint, Mapping):
        arrays = [np.asarray(checkpoint[key]) for key in _keys_of(variables)]
    else:  # a list as returned by final.getvariable_values(), aligned with final.weights
        ids = {id(v): a for v, a in zip(final.weights, checkpoint)}
        arrays = [np.asarray(ids[id(v)]) for v in variables]
    for v, a in zip(variables, arrays):
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"A checkpoint has shape {a.shape} for {v.path}; expected {v.shape}.")
    return arrays


def pca_directions(
    checkpoints: Sequence[keras.Model | Mapping[str, np.ndarray] | Sequence[np.ndarray]],
    final: keras.Model,
    *,
    include: Include = "trainable",
    ignore: Ignore | None = "biasbn",
    center: bool = True,
) -> PCAResult:
    """Top-2 principal directions of the trajectory ``w_t − w_final`` (loss-landscape's recipe).

    Args:
        checkpoints: The weights along training: Keras models of the same architecture, dicts
            ``{variable.path: array}``, or lists as returned by ``final.getvariable_values()``.
        final: The final model; the plane passes through its weights.
        include: Variables to use (``"trainable"`` or ``"all"``). Defaults to ``"trainable"``.
        ignore: ``"biasbn"`` leaves the biasbn class (biases, normalization parameters and
            statistics, by layer semantics; see ``filter_rules``) out of the PCA (zero in the
            directions). Defaults to ``"biasbn"``.
        center: Subtract the mean of the differences before the SVD, as sklearn's PCA (used by
            loss-landscape) does. Defaults to True.

    Returns:
        A ``PCAResult`` with the directions, explained variance ratios and the checkpoints'
        coordinates in that plane.
    """
    include = _check_choice("include", include, Include)
    ignore = _check_choice("ignore", ignore, Ignore)
    if len(checkpoints) < 2:
        raise ValueError(
            f"Argument `checkpoints` needs at least 2 entries. Received: {len(checkpoints)}."
        )
    variables = float_variables(final, include)
    owners = variable_owners(final)
    used = [
        not (ignore == "biasbn" and filter_rule(owners.get(id(v)), v).biasbn) for v in variables
    ]
    w_final = variable_values(variables)

    def flat(arrays):
        return np.concatenate(
            [
                (a.astype(np.float64) - w.astype(np.float64)).ravel()
                for a, w, u in zip(arrays, w_final, used)
                if u
            ]
        )

    m = np.stack([flat(_checkpoint_arrays(c, final, variables)) for c in checkpoints])
    centered = m - m.mean(axis=0) if center else m
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    coords = m @ vt[:2].T
    dirs = []
    for i in range(2):
        comp = vt[i] if i < vt.shape[0] else np.zeros(m.shape[1])
        arrays, offset = {}, 0
        for key, w, u in zip(variables.paths, w_final, used):
            if u:
                arrays[key] = comp[offset : offset + w.size].reshape(w.shape).astype(w.dtype)
                offset += w.size
            else:
                arrays[key] = np.zeros_like(w)
        dirs.append(
            Direction(arrays, {"kind": "pca", "component": i, "include": include, "ignore": ignore})
        )
    return PCAResult(tuple(dirs), np.asarray(ratio, np.float64), coords)
