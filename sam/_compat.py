"""The TensorFlow check and every private Keras/TF attribute the project reads, in one place.

``require_tensorflow`` checks that Keras 3 runs on TensorFlow, with one clear sentence if not.
Everything else here reaches into Keras's private API (``keras.src``, underscored attributes),
checked with Keras 3.15.1 on TensorFlow 2.21 (the floor in pyproject.toml); Keras is imported
inside each function, so that this module loads before the TensorFlow check.
``tests/test_compat.py`` fails if a name moves, instead of a silent fallback.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Any, NamedTuple

INSTALL_HINT = (
    "sam-landscape needs TensorFlow as the Keras backend: install it with "
    "`pip install 'sam-landscape[cpu]'` (or `'sam-landscape[gpu]'` for CUDA)."
)


def require_tensorflow(what: str = "sam-landscape") -> None:
    """Import TensorFlow and make sure Keras runs on it, or raise one ImportError sentence
    naming ``what`` needs it."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's C++ start-up INFO/WARNING lines (CPU features, absl) are noise for our users;
    # a value set beforehand wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"{what} runs on the TensorFlow backend of Keras in this version, but KERAS_BACKEND "
            f"is {keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow before importing keras."
        )


# -- private Keras touchpoints (checked with Keras 3.15.1 on TensorFlow 2.21) -------------------


def no_automatic_dependency_tracking(method):
    """Keras's decorator that stops attribute assignments from being tracked as dependencies.

    The wrapper optimizers of Keras (``LossScaleOptimizer``) put it on ``build``.
    """
    from keras.src.utils import tracking

    return tracking.no_automatic_dependency_tracking(method)


def unbuilt_layers(model) -> list:
    """The layers of ``model`` (itself included, nested ones too) that are not built yet."""
    return [layer for layer in model._flatten_layers() if not layer.built]


def direct_sublayers(layer) -> list:
    """The layers ``layer`` tracks directly (one level down).

    A ``keras.Model`` lists them publicly (``model.layers``); a plain ``Layer``
    (MultiHeadAttention, RNN, Bidirectional, a user's composite layer) has no public list:
    ``_flatten_layers`` walks the same ``_layers`` that ``Layer.variables`` does.
    """
    import keras

    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def conv_lstm_cell_class() -> type | None:
    """``ConvLSTMCell``, a built-in layer class ``keras.layers`` does not export, or None."""
    try:
        from keras.src.layers.rnn.conv_lstm import ConvLSTMCell
    except ImportError:  # moved in another Keras: its layers then fall back with a warning
        return None
    return ConvLSTMCell


def build_for_fit(model, data_batch) -> None:
    """What ``Model.fit`` does before its first step under a strategy: build the model, its
    metrics, loss and optimizer state from one batch (``Trainer._symbolic_build``)."""
    model._symbolic_build(data_batch=data_batch)


def symbolic_build(model, x) -> None:
    """Build every layer of ``model`` by a symbolic call on ``x``'s shapes and dtypes.

    This is what ``Model.fit`` does before its first step under a distribution strategy
    (``Trainer._symbolic_build``): ``keras.src.backend.compute_output_spec`` calls the model on
    placeholders in a scratch graph inside a ``StatelessScope`` (the variables it makes are
    initialized when the scope closes), so it neither runs the model on data nor changes any
    state (BatchNorm statistics, RNG seeds). Called in the first trace of ``fit``'s step, it
    makes the model's variables there, where ``tf.function`` allows new variables.
    """
    import keras
    from keras.src.backend import compute_output_spec

    def spec(t):
        if t is None:
            return None
        return keras.KerasTensor(t.shape, keras.backend.standardize_dtype(t.dtype))

    compute_output_spec(model, keras.tree.map_structure(spec, x), training=False)


def plain_error(error: Exception) -> Exception:
    """``error`` marked so that Keras re-raises it as it is, one sentence.

    Keras rewrites an exception raised inside an operation's call (``keras.ops.cond`` in
    ``LossScaleOptimizer.apply``) into "Exception encountered when calling Cond.call() ..." with
    the arguments appended, unless ``keras.src.utils.traceback_utils`` finds this marker.
    """
    error._keras_call_info_injected = True
    return error


def forget_traced_train_step(optimizer) -> None:
    """Make the Keras model training with ``optimizer`` trace its train step anew next time.

    Called when ``optimizer`` refuses a step while ``fit`` traces it. A ``tf.function`` whose
    first trace created variables (a subclassed model built there, a ``LossScaleOptimizer``
    built by its first ``apply``) and then raised is left broken by TensorFlow: later calls run
    nothing and return None, so a second ``train_on_batch`` would silently do nothing and a
    second ``fit`` would fail with an unrelated error. Clearing ``model.train_function`` (what
    ``compile`` does) makes the next call trace again and raise the same clear error. The model
    is the ``self`` of a calling frame (``Model.train_step``) whose optimizer is, or wraps,
    ``optimizer``; if none is found, nothing changes.
    """
    import sys

    import keras

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.Model):
            used = getattr(owner, "optimizer", None)
            if used is optimizer or getattr(used, "inner_optimizer", None) is optimizer:
                owner.train_function = None
                return
        frame = frame.f_back


_FUNCTIONAL_VARIANTS: dict = {}


def is_functional_call(args, kwargs) -> bool:
    """Whether ``Model(*args, **kwargs)`` asks for a functional model (inputs and outputs)."""
    from keras.src.models.model import functional_init_arguments

    return functional_init_arguments(args, kwargs)


def _reduce_as(cls, variant):
    """``__reduce__`` for ``variant`` that pickles by ``cls``, which can be imported by name."""

    def __reduce__(self):
        unpickle, *rest = super(variant, self).__reduce__()
        if getattr(unpickle, "__self__", None) is variant:  # Keras: (cls._unpickle_model, ...)
            unpickle = getattr(cls, unpickle.__name__)
        return (unpickle, *rest)

    return __reduce__


def init_as_functional(model, *args, **kwargs) -> None:
    """Initialize an instance of a ``keras.Model`` subclass as a functional model.

    ``keras.Model.__init__`` does this by rewriting ``__bases__`` of every class between the
    instance's class and ``keras.Model`` so that they derive from ``Functional``, for good: after
    one ``SAMModel(inputs, outputs)``, every later ``class MyModel(SAMModel)`` built the subclassed
    way would be a ``Functional`` without inputs and fail. Instead this instance alone gets a class
    of its own, ``(its class, Functional)``, with the same name and registered name (so it saves,
    loads and pickles as its class), and is initialized as ``keras.Model.__init__`` would.
    """
    from keras.src.models.functional import Functional
    from keras.src.models.model import Trainer  # the backend's trainer, as Model.__init__ uses
    from keras.src.saving.object_registration import GLOBAL_CUSTOM_NAMES, get_registered_name

    cls = type(model)
    if not issubclass(cls, Functional):
        variant = _FUNCTIONAL_VARIANTS.get(cls)
        if variant is None:
            namespace = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            }
            variant = type(cls.__name__, (cls, Functional), namespace)
            variant.__reduce__ = _reduce_as(cls, variant)
            GLOBAL_CUSTOM_NAMES[variant] = get_registered_name(cls)
            _FUNCTIONAL_VARIANTS[cls] = variant
        object.__setattr__(model, "__class__", variant)
    Trainer.__init__(model)
    Functional.__init__(model, *args, **kwargs)


# -- for landscape: the compiled loss and metrics, Keras masks, layer-name counters -------------
# Keras 3 has no public way to reach the loss and metrics a model was compiled with, nor the mask
# a layer attaches to its output tensor; ``landscape.Objective`` needs all three to measure
# exactly what ``model.evaluate`` reports. Loading a model in a worker process needs Keras's
# counters of automatic layer names, so that its variable paths are the coordinator's.


class FlatLoss(NamedTuple):
    """One term of a compiled loss: ``weight · loss(y_true[path], y_pred[path])``."""

    path: tuple
    loss: Any  # keras.losses.Loss
    weight: float | None
    name: str


def _private(obj: Any, name: str):
    """``obj.name``, or a RuntimeError naming this Keras version (never a silent fallback)."""
    if not hasattr(obj, name):
        import keras

        raise RuntimeError(
            f"This Keras version ({keras.__version__}) has no `{type(obj).__name__}.{name}`, "
            "which sam-landscape reads (sam/_compat.py); please report it."
        )
    return getattr(obj, name)


def omit_frequent_tracing_warning(fn) -> None:
    """Turn off TensorFlow's "frequent retracing" warning for the ``tf.function`` ``fn``.

    TensorFlow keys that warning by the Python code object, so several functions made from one
    closure (each traced once, e.g. one per Objective) set it off wrongly. The private flag
    ``Function._omit_frequent_tracing_warning`` is TensorFlow's own switch for this; a
    TensorFlow without it is a RuntimeError, never a silent fallback.
    """
    if not hasattr(fn, "_omit_frequent_tracing_warning"):
        import tensorflow as tf

        raise RuntimeError(
            f"This TensorFlow version ({tf.__version__}) has no "
            "`Function._omit_frequent_tracing_warning`, which sam-landscape sets "
            "(sam/_compat.py); please report it."
        )
    fn._omit_frequent_tracing_warning = True


def flat_call(fn):
    """A caller of the ``tf.function`` ``fn`` (made with an ``input_signature``) that runs its
    one concrete function through ``ConcreteFunction._call_flat``.

    A plain call binds every argument to the signature in Python (``TensorSpec`` subtype checks
    and casts): on ResNet-50's 320 variables ``Objective.evaluate_at`` took 147.4 ms with it and
    130.6 ms with the flat call (interleaved, medians of 21), a 64-image forward pass being
    about 83 ms. The flat call passes the tensors as they are; the output is the same
    structure. Taken only where every argument is a tensor of its spec's dtype and rank (else the
    plain call, which converts or refuses as TensorFlow does). A TensorFlow without
    ``_call_flat`` or ``captured_inputs`` is a RuntimeError, never a silent fallback.
    """
    import tensorflow as tf

    state: dict = {}

    def call(*args):
        concrete = state.get("concrete")
        if concrete is None:
            concrete = state["concrete"] = fn.get_concrete_function()  # the one trace
            for name in ("_call_flat", "captured_inputs"):
                if not hasattr(concrete, name):
                    raise RuntimeError(
                        f"This TensorFlow version ({tf.__version__}) has no "
                        f"`ConcreteFunction.{name}`, which sam-landscape uses (sam/_compat.py); "
                        "please report it."
                    )
            state["specs"] = tf.nest.flatten(fn.input_signature)
        flat, specs = tf.nest.flatten(args), state["specs"]
        if len(flat) != len(specs) or not all(
            isinstance(t, tf.Tensor) and t.dtype == s.dtype and t.shape.rank == s.shape.rank
            for t, s in zip(flat, specs)
        ):
            return fn(*args)
        return concrete._call_flat(flat, concrete.captured_inputs)

    return call


def compiled_loss(model):
    """The loss object ``model.compile(loss=..., loss_weights=...)`` made (a CompileLoss), or
    None."""
    return _private(model, "_compile_loss")


def compiled_metrics(model):
    """The metric object ``model.compile(metrics=..., weighted_metrics=...)`` made, or None."""
    return _private(model, "_compile_metrics")


def make_compile_loss(loss, output_names):
    """A loss object built from ``loss`` exactly as ``model.compile(loss=loss)`` would."""
    from keras.src.trainers.compile_utils import CompileLoss

    return CompileLoss(loss, loss_weights=None, output_names=output_names)


def flat_losses(compile_loss) -> list[FlatLoss]:
    """The resolved per-output losses of a built ``CompileLoss``."""
    if not compile_loss.built:
        raise RuntimeError("The compiled loss is not built yet.")
    return [FlatLoss(*entry) for entry in _private(compile_loss, "_flat_losses")]


def build_structures(compile_loss) -> tuple[Any, Any]:
    """(y_true, y_pred) structures the built ``CompileLoss`` resolves its paths in."""
    return (
        _private(compile_loss, "_y_true_build_structure"),
        _private(compile_loss, "_y_pred_build_structure"),
    )


def keras_mask(tensor):
    """The Keras mask attached to ``tensor`` by a masking layer (or ``ignore_class``), or None."""
    from keras.src.backend.common.masking import get_keras_mask

    return get_keras_mask(tensor)


_NAME_UIDS = "object_name_uids"


def layer_name_counters() -> dict[str, int]:
    """Keras's per-process counters behind automatic layer names (``dense``, ``dense_1``)."""
    from keras.src.backend.common import global_state

    return dict(global_state.get_global_attribute(_NAME_UIDS) or {})


def set_layer_name_counters(counters: dict[str, int]) -> None:
    """Replace the counters (a ``defaultdict(int)``, as Keras keeps them)."""
    from keras.src.backend.common import global_state

    global_state.set_global_attribute(_NAME_UIDS, collections.defaultdict(int, counters))


# -- for landscape: the analysis precision ------------------------------------------------------
# ``landscape.Objective`` computes a mixed-precision model in float32 (or any model in float64):
# it gives the model's layers another dtype policy while it traces (the public setter) and maps
# the variables to values of the analysis dtype. Keras has no public way to list every nested
# layer of a model, nor to map a variable to a value of another dtype in a ``StatelessScope``.


def all_layers(model) -> list:
    """Every layer of ``model``: itself and all nested layers (``Layer._flatten_layers``)."""
    return list(_private(model, "_flatten_layers")(include_self=True, recursive=True))


def is_graph_container(layer) -> bool:
    """Whether ``layer`` is a functional or ``Sequential`` model: its own call only routes tensors
    between its layers (whose policies decide the arithmetic), so its dtype policy — the global
    one when it was built — computes nothing. A subclassed model's ``call`` may compute."""
    import keras
    from keras.src.models.functional import Functional

    return isinstance(layer, Functional | keras.Sequential)


def stateless_scope_keeping_dtypes(mapping):
    """A ``keras.StatelessScope`` in which each variable reads as the value given, dtype kept.

    ``StatelessScope(state_mapping=...)`` casts every value to its variable's dtype; this scope
    stores the values as they are (``StatelessScope.state_mapping``, keyed by ``id(variable)``,
    which ``KerasVariable.value`` reads), so that float32 variables read as float64 values.
    The variables themselves are never assigned.
    """
    import keras

    scope = keras.StatelessScope()
    state = _private(scope, "state_mapping")
    for variable, value in mapping:
        state[id(variable)] = value
    return scope


def adam_velocity(optimizer, variable):
    """Adam's second-moment estimate v for ``variable`` (``Adam._velocities`` at
    ``Optimizer._get_variable_index(variable)``; checked with Keras 3.15)."""
    index = _private(optimizer, "_get_variable_index")(variable)
    return _private(optimizer, "_velocities")[index]


# -- for landscape and sam: which variables a StatelessScope reaches ----------------------------
# An offset (landscape) or a perturbation (SAM) reaches a variable only if the layer reads it
# through ``KerasVariable.value``, which asks the active ``StatelessScope`` for its mapped value
# (``StatelessScope.get_current_value``). A layer that caches a tensor computed from a variable
# (the preprocessing ``Normalization`` after ``adapt``) or calls a function that captured the
# variable's handle (``TFSMLayer``) never asks: the scope cannot move that variable.


def record_reads(scope) -> set[int]:
    """The ids of the variables read in ``scope`` from now on (filled as the model runs).

    Wraps the scope's ``get_current_value``, which ``KerasVariable.value`` calls for every read
    inside a ``StatelessScope`` (checked with Keras 3.15).
    """
    seen: set[int] = set()
    lookup = scope.get_current_value

    def get_current_value(variable):
        seen.add(id(variable))
        return lookup(variable)

    scope.get_current_value = get_current_value
    return seen


# -- for landscape: exact second derivatives ----------------------------------------------------
# First derivatives of Keras's built-in layers on TensorFlow are exact; some second derivatives
# are not. ``landscape.Objective`` runs the model inside ``exact_second_derivatives()`` while it
# traces, so that the graphs it differentiates twice hold exact operations instead; the user's
# model, its training and every other caller keep TensorFlow's own operations.


def _exact_moments(x, axes, keepdims):
    """``tf.nn.moments`` without its ``stop_gradient``: the same mean and variance to rounding.

    ``tf.nn.moments`` computes the variance as mean((x − stop_gradient(mean))²). The stopped
    gradient is zero at the mean, so first derivatives are exact, but the second derivatives
    miss the terms through the mean (relative errors of 1e-3 to 5e-2 in a Hessian-vector
    product through LayerNormalization or GroupNormalization).
    """
    import tensorflow as tf

    y = tf.cast(x, tf.float32) if x.dtype == tf.float16 else x  # as tf.nn.moments does
    mean = tf.reduce_mean(y, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(y, mean), axes, keepdims=True)
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    if x.dtype == tf.float16:
        return tf.cast(mean, tf.float16), tf.cast(variance, tf.float16)
    return mean, variance


def _interpolation_taps(original, length, new_length, taps, kwargs):
    """The 1-D interpolation of ``original`` from ``length`` to ``new_length`` points, as
    (indices, weights) of shape [new_length, taps]: the resize of each unit vector, by the
    original operation itself (so its conventions are kept), read as a matrix."""
    import tensorflow as tf

    basis = tf.reshape(tf.eye(length, dtype=tf.float32), [length, length, 1, 1])
    matrix = tf.transpose(original(basis, tf.stack([new_length, 1]), **kwargs)[:, :, 0, 0])
    matrix = tf.cast(matrix, tf.float32)
    indices = tf.math.top_k(tf.abs(matrix), k=tf.minimum(taps, length)).indices
    return indices, tf.gather(matrix, indices, batch_dims=1)


def _separable_resize(original, taps):
    """An exact stand-in for a resize operation whose gradient TensorFlow cannot differentiate.

    ``ResizeBilinearGrad`` is registered not differentiable (a Hessian-vector product through
    bilinear resizing silently misses every term through it), and ``ResizeNearestNeighborGrad``
    and ``ResizeBicubicGrad`` have no gradient (it raises). The resize is linear and separable:
    the stand-in gathers each output's ``taps`` nearest inputs along the height, then the width,
    and weights them by the original operation's own interpolation weights; gathers and sums
    are differentiable to any order. Nearest-neighbour (one tap) keeps the dtype; bilinear and
    bicubic compute in float64 for float64 images (the kernels compute in float32), else
    float32, as the kernels return.
    """

    def resize(images, size, align_corners=False, half_pixel_centers=False, name=None):
        import tensorflow as tf

        kwargs = {"align_corners": align_corners, "half_pixel_centers": half_pixel_centers}
        images = tf.convert_to_tensor(images)
        if taps > 1:
            images = tf.cast(images, tf.float64 if images.dtype == tf.float64 else tf.float32)
        size = tf.convert_to_tensor(size, tf.int32)
        shape = tf.shape(images)
        for axis in (1, 2):
            indices, weights = _interpolation_taps(
                original, shape[axis], size[axis - 1], taps, kwargs
            )
            if taps == 1:
                images = tf.gather(images, indices[:, 0], axis=axis)
                continue
            gathered = tf.gather(images, indices, axis=axis)  # the new axis after `axis`
            pattern = "bokwc,ok->bowc" if axis == 1 else "bhokc,ok->bhoc"
            images = tf.einsum(pattern, gathered, tf.cast(weights, images.dtype))
        return images

    return resize


def _exact_replacements() -> list:
    """(module, attribute, exact stand-in) for each operation patched while active."""
    from keras.src.backend.tensorflow import nn as keras_tf_nn
    from tensorflow.python.ops import gen_image_ops

    return [
        (keras_tf_nn, "_compute_moments", _exact_moments),
        *(
            (gen_image_ops, op, _separable_resize(_module_attribute(gen_image_ops, op), taps))
            for op, taps in (
                ("resize_nearest_neighbor", 1),
                ("resize_bilinear", 2),
                ("resize_bicubic", 4),
            )
        ),
    ]


def _module_attribute(module, name: str):
    """``module.name``, or a RuntimeError naming this Keras/TF version (never a silent no-op)."""
    if not hasattr(module, name):
        import keras
        import tensorflow as tf

        raise RuntimeError(
            f"This Keras/TensorFlow version ({keras.__version__} / {tf.__version__}) has no "
            f"`{module.__name__}.{name}`, which sam-landscape replaces for exact second "
            "derivatives (sam/_compat.py); please report it."
        )
    return getattr(module, name)


@contextlib.contextmanager
def exact_second_derivatives():
    """While active, Keras's layers on TensorFlow build operations with exact second derivatives.

    Replaced (module attributes, looked up at each call): Keras's ``_compute_moments`` (behind
    ``ops.moments``: LayerNormalization, GroupNormalization, BatchNormalization in training) by
    the variance without ``tf.nn.moments``'s ``stop_gradient``; TensorFlow's
    ``resize_nearest_neighbor``, ``resize_bilinear`` and ``resize_bicubic`` (behind
    ``tf.image.resize``: Resizing, UpSampling2D bilinear) by gathers weighted with the
    operations' own interpolation weights. The values are the same to rounding. Everything is
    put back on exit, also when the body raises; nested use is fine. Operations built outside
    (the user's model and training) are untouched. A no-op on other backends.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        yield
        return
    saved = []
    try:
        for module, name, replacement in _exact_replacements():
            saved.append((module, name, _module_attribute(module, name)))
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def autocast_scope(dtype: str):
    """Keras's ``AutocastScope(dtype)``: inside it, every float variable with ``autocast`` reads
    as, and reports its ``dtype`` as, ``dtype``.

    ``landscape.Objective`` enters it when it reads variables in a wider dtype than their own
    (float32 weights in a float64 analysis, bfloat16 ones in float32): Keras's ops take an
    operand's dtype from ``variable.dtype``, so two float32 variables meeting directly (a LoRA
    update ``a @ b``) would otherwise be computed in float32 even from float64 values.
    ``Layer.__call__`` keeps the scope for layers computing in ``dtype`` and replaces it for the
    others (checked with Keras 3.15: ``keras.src.backend.common.variables.AutocastScope``).
    """
    from keras.src.backend.common.variables import AutocastScope

    return AutocastScope(dtype)


# -- for sam: optimizer configs that load on every backend ------------------------------------


def backend_neutral_config(config):
    """A serialized optimizer's ``config`` that deserializes on every Keras backend.

    On PyTorch, Keras swaps its built-in optimizers for subclasses in
    ``keras.src.backend.torch.optimizers`` (``TorchOptimizer.__new__``), and
    ``serialize_keras_object`` records that module: loaded on TensorFlow or JAX, the PyTorch
    class would run on their variables. The public class of the same name in
    ``keras.optimizers`` is what every backend resolves (and swaps again on PyTorch).
    """
    if not isinstance(config, dict):
        return config
    if str(config.get("module", "")).startswith("keras.src.backend."):
        config = {**config, "module": "keras.optimizers", "registered_name": None}
    return config


# -- for sam: keras.callbacks.SwapEMAWeights --------------------------------------------------
# The callback reads ``optimizer._model_variables_moving_average`` (and the optimizer's
# ``_trainable_variables``); SAM defines the former as its base optimizer's EMA (Keras 3.15).


def ema_variables(optimizer):
    """The EMA of the weights that ``optimizer`` keeps (``use_ema=True``), or None."""
    return getattr(optimizer, "_model_variables_moving_average", None)


def built_variables(optimizer) -> list:
    """The variables ``optimizer`` was built for (``Optimizer._trainable_variables``)."""
    return list(_private(optimizer, "_trainable_variables"))


def numpy_batches(data, steps: int | None = None):
    """The batches of a dataset (``tf.data``, ``keras.utils.PyDataset``, a PyTorch
    ``DataLoader``, a generator) as NumPy, in order, through Keras's own data adapters
    (``keras.src.trainers.data_adapters.get_data_adapter``, as ``fit`` reads them)."""
    import itertools

    from keras.src.trainers.data_adapters import get_data_adapter

    adapter = get_data_adapter(data, steps_per_epoch=steps, shuffle=False)
    adapter.on_epoch_begin()
    try:  # the first ``steps`` batches (Keras's adapters leave tf.data's steps to the caller)
        yield from itertools.islice(adapter.get_numpy_iterator(), steps)
    finally:
        adapter.on_epoch_end()
