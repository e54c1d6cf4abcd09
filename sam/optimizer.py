"""Sharpness-Aware Minimization as a Keras 3 optimizer wrapper.

SAM (Foret et al. 2020) minimizes the worst loss in a ρ-ball around the weights. Each step
1. climbs to the local maximum  w + ε(w),  ε(w) = ρ · g / ‖g‖₂          (``first_step``)
2. comes back to w and updates it with the gradient taken at w + ε(w)   (``second_step``)
ASAM (Kwon et al. 2021) makes the ball adaptive to the weight scale:
   ε(w) = ρ · T² g / ‖T g‖₂,  T = |w| + η for weights (kernels, embeddings, normalization γ),
   T = 1 for biases (of any rank) and normalization β: the role comes from the layer that owns
   the tensor (``sam._roles``), as in the ASAM reference.

The maths lives in two small pure functions (``sam_perturbation``, ``asam_perturbation``); the
``SAM`` class wraps a base optimizer the way ``keras.optimizers.LossScaleOptimizer`` does, so that
``compile``, learning-rate callbacks, saving and mixed precision see the real optimizer.
Everything is ``keras.ops`` on any backend; what differs per backend (eager or traced, replicas,
TensorFlow's IndexedSlices and its ``tf.cond`` restore in a graph) is asked of ``sam._backend``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from keras.saving import deserialize_keras_object, serialize_keras_object

from sam._backend import adapter
from sam._compat import (
    backend_neutral_config,
    built_variables,
    ema_variables,
    forget_traced_train_step,
    no_automatic_dependency_tracking,
    plain_error,
)
from sam._roles import OFFSET_ROLES, model_roles, name_role

logger = logging.getLogger("sam")

Tensor = Any  # a tensor of the Keras backend (tf.Tensor, jax.Array, torch.Tensor)

RHO = 0.05  # radius of the neighbourhood, the paper's default for CIFAR
ETA = 0.01  # ASAM's offset in T = |w| + η, so that zero weights still move
EPS = 1e-12  # keeps ρ/‖g‖ finite when the gradient vanishes

# What SAM.apply says when it is called outside a SAM step (Keras's own train_step, a custom loop
# calling apply/apply_gradients): one gradient per step would make it plain base-optimizer descent.
NOT_A_SAM_STEP = (
    "SAM needs two gradient evaluations on the same batch (at w and at w + ε(w)), but "
    "SAM.apply was called with one gradient, as keras.Model.train_step and a custom loop's "
    "apply/apply_gradients do: use sam.SAMModel, call sam.sam_train_step(self, data) in your "
    "model's train_step, or call first_step and second_step in a custom loop."
)

# SAM steps in progress (tf.distribute traces one replica per thread): see SAM.sam_update.
_UPDATE_LOCK = threading.Lock()

# Arguments of keras.optimizers.Optimizer that belong to the base optimizer, with their defaults.
_BASE_ONLY_ARGUMENTS = {
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def _compute_dtype(tensors) -> str:
    """float32 for the norm, or float64 when the model itself is float64."""
    return "float64" if any(_dtype(t) == "float64" for t in tensors) else "float32"


def _dtype(t) -> str:
    return keras.backend.standardize_dtype(t.dtype)


def _dense(g):
    """A gradient as a dense tensor of the backend (TensorFlow's IndexedSlices scattered)."""
    return None if g is None else adapter().dense(g)


def all_finite(tensors):
    """True when no entry of any (non-None) tensor is NaN or infinite (IndexedSlices: its rows)."""
    rows = adapter().rows
    flags = [ops.all(ops.isfinite(rows(t))) for t in tensors if t is not None]
    return ops.all(ops.stack(flags)) if flags else ops.convert_to_tensor(True)


def _scaled_perturbation(grads, trust, rho, eps):
    """ε = ρ · T²g / (‖Tg‖₂ + eps), T per tensor (None: T = 1); ε = 0 if g is not finite."""
    present = [g for g in grads if g is not None]
    if not present:
        return [None] * len(grads)
    dtype = _compute_dtype(present)
    finite = all_finite(present)
    tg = []  # T·g in the compute dtype, zeroed when the gradient is not finite
    for g, t in zip(grads, trust):
        if g is None:
            tg.append(None)
            continue
        g = ops.where(finite, ops.cast(g, dtype), ops.zeros_like(g, dtype=dtype))
        tg.append(g if t is None else ops.cast(t, dtype) * g)
    norm = ops.sqrt(adapter().add_n([ops.sum(ops.square(x)) for x in tg if x is not None]))
    scale = ops.convert_to_tensor(rho, dtype) / (norm + ops.convert_to_tensor(eps, dtype))
    out = []
    for g, t, x in zip(grads, trust, tg):
        if g is None:
            out.append(None)
            continue
        e = scale * x if t is None else scale * ops.cast(t, dtype) * x
        out.append(ops.cast(e, _dtype(g)))
    return out


def sam_perturbation(
    grads: Sequence[Tensor | None], *, rho: float = RHO, eps: float = EPS
) -> list[Tensor | None]:
    """SAM's ε(w) = ρ · g / (‖g‖₂ + eps), with the global norm over all non-None gradients.

    Args:
        grads: Gradients at w, one per variable; None entries stay None.
        rho: Radius of the ball. Defaults to 0.05.
        eps: Added to the norm. Defaults to 1e-12.

    Returns:
        One ε per gradient (None for None). The norm is computed in float32 (float64 for a
        float64 model). If any gradient entry is NaN or infinite, every ε is zero, so a bad
        gradient never reaches the weights through the perturbation.
    """
    grads = [_dense(g) for g in grads]
    return _scaled_perturbation(grads, [None] * len(grads), rho, eps)


def asam_trust(weight: Tensor, eta: float = ETA, scaled: bool | None = None) -> Tensor | None:
    """ASAM's T for one tensor: |w| + η if ``scaled``, None (T = 1) otherwise.

    ``scaled`` is the tensor's role (True for weights, False for biases and normalization β,
    see ``SAM.variable_role``); None, for a bare tensor whose role is unknown, guesses it from
    the rank (ndim ≥ 2 scaled), which is wrong for attention biases and normalization γ.
    """
    if scaled is None:
        scaled = len(weight.shape) >= 2
    return ops.abs(weight) + ops.convert_to_tensor(eta, dtype=_dtype(weight)) if scaled else None


def asam_perturbation(
    grads: Sequence[Tensor | None],
    weights: Sequence[Tensor],
    *,
    rho: float = RHO,
    eta: float = ETA,
    eps: float = EPS,
    scaled: Sequence[bool] | None = None,
) -> list[Tensor | None]:
    """Adaptive SAM's ε(w) = ρ · T²g / (‖Tg‖₂ + eps), T = |w| + η for weights, 1 for offsets.

    The ASAM reference implementation (Kwon et al. 2021, SamsungLabs/ASAM ``asam.py``) uses
    T = |w| + η for every parameter whose name contains "weight" (kernels, embeddings,
    normalization γ, PReLU) and T = 1 for the others (every bias, normalization β). ``SAM``
    passes that rule as ``scaled``, from each variable's role in its layer. davda54/sam differs:
    it uses T = |w| (no η) for every tensor, biases and normalization parameters included.

    Args:
        grads: Gradients at w, one per variable; None entries stay None.
        weights: The current weights, aligned with ``grads``.
        rho: Radius of the adaptive ball. Defaults to 0.05 (ASAM papers use larger values,
            e.g. 0.5 or 2.0).
        eta: Offset of T. Defaults to 0.01.
        eps: Added to the norm. Defaults to 1e-12.
        scaled: Per tensor, True for T = |w| + η and False for T = 1. Defaults to None: a
            bare tensor's rank decides (ndim ≥ 2 scaled), which misjudges rank-2 attention
            biases and normalization γ; pass the roles when the tensors have them.

    Returns:
        One ε per gradient (None for None); all zero when a gradient is not finite.

    References:
        Kwon et al., ASAM, https://arxiv.org/abs/2102.11600
    """
    grads = [_dense(g) for g in grads]
    if len(grads) != len(weights):
        raise ValueError(
            f"Got {len(grads)} gradients for {len(weights)} weights; they must be aligned."
        )
    if scaled is None:
        scaled = [None] * len(grads)
    elif len(scaled) != len(grads):
        raise ValueError(f"Got {len(scaled)} roles (`scaled`) for {len(grads)} gradients.")
    trust = [
        None if g is None else asam_trust(ops.convert_to_tensor(w), eta, s)
        for g, w, s in zip(grads, weights, scaled)
    ]
    return _scaled_perturbation(grads, trust, rho, eps)


def _check_number(name, value, *, minimum, strict=False):
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = value <= minimum if strict else value < minimum
    if bad:
        rule = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"Argument `{name}` must be a number {rule}. Received: {name}={value!r}.")


def _unexpected(kwargs) -> ValueError:
    """The error for arguments SAM does not take, naming the SAM family's where they belong."""
    family = {"perturbed", "schedule", "swp_beta", "sds_gamma"} & set(kwargs)
    hint = (
        f"; {', '.join(sorted(family))} belong to the SAM family: use "
        "sam.SAMVariant(base, ...) or a member (GSAM, FriendlySAM, ESAM)"
        if family
        else ""
    )
    return ValueError(f"SAM got unexpected arguments: {sorted(kwargs)}{hint}.")


def _is_pending(optimizer) -> bool:
    """Whether a first_step of ``optimizer`` is pending (eagerly: its flag's value now)."""
    return bool(optimizer._pending.numpy() > 0.5)


@keras.saving.register_keras_serializable(package="sam")
class SAM(keras.optimizers.Optimizer):
    """Sharpness-Aware Minimization around any Keras optimizer.

    ``SAM`` wraps a base optimizer like ``keras.optimizers.LossScaleOptimizer`` does:
    ``learning_rate`` and ``iterations`` are the base optimizer's (so schedules, the
    ``LearningRateScheduler`` and ``ReduceLROnPlateau`` callbacks act on the real rate), its state
    is saved and restored with the model, and ``compile(optimizer=SAM(...))`` works.

    A SAM step needs two gradients of the same batch, so SAM trains only through the two ways
    below. The default ``keras.Model.train_step`` (``compile(optimizer=SAM(...))`` on a plain
    ``keras.Model``) and a custom loop calling ``apply``/``apply_gradients`` make one gradient per
    step: there ``apply`` raises a ``ValueError`` saying what to use, at the first step and at
    every later one, before the base optimizer changes any weight, rather than silently training
    with the base optimizer alone. (A compiled ``fit`` step is refused while it is traced, so
    nothing of it runs; with ``run_eagerly=True`` its forward pass has run, updating BatchNorm
    statistics.)

    Two ways to train with it:

    * ``SAMModel`` / ``sam_train_step`` in ``fit``: the perturbed pass runs without touching the
      weights (a stateless call at w + ε), so BatchNorm moving statistics are those of the clean
      pass, dropout uses the clean pass's mask, and under ``tf.distribute`` every replica may
      perturb with its own gradient. This is the recommended path.
    * A custom loop with ``first_step`` / ``second_step``, as in the original TF2 code: the first
      step moves the weights to w + ε(w) and remembers w in optimizer variables; the second step
      restores w bit-exactly and applies the base optimizer to the gradient taken at w + ε(w).
      The two steps may run in separate ``tf.function``s and under XLA. The copy of w is made
      by the first ``first_step`` (none is made, or saved, when only ``SAMModel`` is used).

    Args:
        base_optimizer: The ``keras.optimizers.Optimizer`` that makes the update (e.g. SGD).
        rho: Radius of the neighbourhood. Defaults to 0.05.
        adaptive: Use ASAM's scale-invariant neighbourhood. Defaults to False.
        eta: ASAM's offset in T = |w| + η. Defaults to 0.01.
        eps: Added to the gradient norm. Defaults to 1e-12.
        sync_perturbations: Under ``tf.distribute`` in ``sam_train_step``, all-reduce the first
            gradient so every replica uses the same ε: the step then equals single-device SAM on
            the global batch. The default (False) lets each replica perturb with its own gradient,
            as google-research/sam does and found to generalize better. On JAX under
            ``keras.distribution.DataParallel`` the step is one SPMD program whose gradient is
            the global batch's: ε is always the synchronized one there. Defaults to False.
        num_batch_splits: m-sharpness on one device: ``sam_train_step`` splits each batch into
            this many micro-batches, each with its own ε, and averages their second-pass
            gradients (weighted by micro-batch size). Defaults to 1.
        name: Name of the optimizer. Defaults to "sam".

    Example:

    ```python
    model = SAMModel(inputs, outputs)
    model.compile(optimizer=SAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10)
    ```

    References:
        Foret et al., Sharpness-Aware Minimization, https://arxiv.org/abs/2010.01412
        Kwon et al., ASAM, https://arxiv.org/abs/2102.11600
    """

    def __init__(
        self,
        base_optimizer,
        rho=RHO,
        adaptive=False,
        eta=ETA,
        eps=EPS,
        sync_perturbations=False,
        num_batch_splits=1,
        name=None,
        **kwargs,
    ):
        if isinstance(base_optimizer, (SAM, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(
                "Argument `base_optimizer` must be a plain optimizer, not a "
                f"{type(base_optimizer).__name__}: under mixed precision the "
                "LossScaleOptimizer goes around SAM (compile does this for you). "
                f"Received: base_optimizer={base_optimizer!r}."
            )
        if not isinstance(base_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "Argument `base_optimizer` must be a keras.optimizers.Optimizer instance. "
                f"Received: base_optimizer={base_optimizer!r}."
            )
        _check_number("rho", rho, minimum=0)
        _check_number("eta", eta, minimum=0)
        _check_number("eps", eps, minimum=0, strict=True)
        if isinstance(num_batch_splits, bool) or not isinstance(num_batch_splits, int):
            raise ValueError(
                "Argument `num_batch_splits` must be an integer >= 1. "
                f"Received: num_batch_splits={num_batch_splits!r}."
            )
        if num_batch_splits < 1:
            raise ValueError(
                "Argument `num_batch_splits` must be an integer >= 1. "
                f"Received: num_batch_splits={num_batch_splits!r}."
            )
        for arg, default in _BASE_ONLY_ARGUMENTS.items():
            if arg in kwargs and kwargs.pop(arg) != default:
                raise ValueError(
                    f"SAM does not take `{arg}`: set it on the base optimizer instead."
                )
        if kwargs:
            raise _unexpected(kwargs)
        super().__init__(learning_rate=0.0, name=name or "sam")
        self.base_optimizer = base_optimizer
        self.rho = float(rho)
        self.adaptive = bool(adaptive)
        self.eta = float(eta)
        self.eps = float(eps)
        self.sync_perturbations = bool(sync_perturbations)
        self.num_batch_splits = num_batch_splits
        self._sam_updates = 0  # SAM steps in progress, see sam_update
        self._remembered = None  # the copy of w, made by the first manual step (first_step)
        self._roles = {}  # id(variable) -> role in its layer (sam._roles), see assign_roles

    # -- state -------------------------------------------------------------------------------

    @no_automatic_dependency_tracking
    def build(self, var_list):
        """Create the base optimizer's state and SAM's own: the flag of a pending first_step.

        The copy of w that ``first_step`` remembers is made only when ``first_step`` (or
        ``second_step``/``restore``) is first used: ``SAMModel`` and ``sam_train_step`` never
        assign to the weights and do not need it.
        """
        if not self.base_optimizer.built:
            self.base_optimizer.build(var_list)
        self._pending = self.add_variable(
            shape=(), dtype="float32", aggregation="only_first_replica", name="sam_pending"
        )
        self._remembered = None
        super().build(var_list)

    @no_automatic_dependency_tracking
    def _weight_copy(self):
        """The optimizer variables that remember w, one per built variable, made on first use.

        Like any optimizer state, they are made by the first use: eagerly, or in the first trace
        of a ``tf.function`` (``tf.function`` refuses new variables in later traces). That is
        where the first ``first_step`` builds SAM anyway; after ``fit`` has built SAM without
        them, a custom loop's first trace makes them.
        """
        if self._remembered is None:
            with keras.name_scope(self.name, caller=self):
                self._remembered = [
                    self.add_variable_from_reference(v, name="sam_w")
                    for v in self._trainable_variables
                ]
        return self._remembered

    def _core_variables(self):
        """SAM's own variables but the copy of w (iterations, learning rate, the pending flag)."""
        copy = {id(v) for v in self._remembered or ()}
        return [v for v in self._variables if id(v) not in copy]

    @property
    def variables(self):
        return self._variables + self.base_optimizer.variables

    @property
    def learning_rate(self):
        return self.base_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.base_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.base_optimizer.iterations

    @property
    def _model_variables_moving_average(self):
        """The base optimizer's EMA of the weights, for ``keras.callbacks.SwapEMAWeights``.

        The EMA is the base optimizer's (``use_ema=True`` on it): its update updates it after
        every SAM step. Keras's callback looks for this attribute on the compiled optimizer
        (or a ``LossScaleOptimizer``'s inner one) and pairs it with ``_trainable_variables``;
        without an EMA on the base it is missing (``hasattr`` is False), so the callback
        gives its own message.
        """
        base = self.__dict__.get("base_optimizer")
        average = None if base is None or not base.use_ema else ema_variables(base)
        if average is None:
            raise AttributeError("_model_variables_moving_average")
        if [id(v) for v in built_variables(base)] != [id(v) for v in built_variables(self)]:
            raise ValueError(
                f"The base optimizer of {self.name!r} was built for other variables than "
                "SAM, so its moving average cannot be paired with the model's weights; give "
                "SAM a base optimizer that has not been built."
            )
        return average

    def scale_loss(self, loss):
        return self.base_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.base_optimizer.finalize_variable_values(var_list)

    # -- roles -------------------------------------------------------------------------------

    @no_automatic_dependency_tracking
    def assign_roles(self, model) -> None:
        """Learn each variable's role from the layer that owns it in ``model``.

        ``sam_train_step`` (``fit``) calls it before the first step. ASAM's T and SAM-ON's
        ``"normalization"`` selection use the roles; a variable without one (a custom loop that
        never calls this) gets the role of its own name (``sam._roles.name_role``: ``bias`` and
        ``beta`` → T = 1, every other name T = |w| + η).

        Args:
            model: The model (or layer) whose variables this optimizer trains.
        """
        self._roles = model_roles(model)

    def variable_role(self, variable) -> str:
        """The role of ``variable`` (one of ``sam._roles.ROLES``): by its layer, else its name."""
        return self._roles.get(id(variable)) or name_role(variable)

    def asam_scaled(self, variables) -> list[bool]:
        """ASAM's rule per variable: True for T = |w| + η, False for T = 1 (biases and β)."""
        return [self.variable_role(v) not in OFFSET_ROLES for v in variables]

    # -- the algorithm -----------------------------------------------------------------------

    def perturbation(self, gradients, weights, variables=None):
        """ε(w) for these gradients and weights, by this optimizer's settings (SAM or ASAM).

        ASAM's T per tensor comes from the role of ``variables`` (aligned with ``weights``);
        without them, from the weights' ranks (see ``asam_perturbation``).
        """
        if self.adaptive:
            scaled = None if variables is None else self.asam_scaled(variables)
            return asam_perturbation(
                gradients, weights, rho=self.rho, eta=self.eta, eps=self.eps, scaled=scaled
            )
        return sam_perturbation(gradients, rho=self.rho, eps=self.eps)

    def _epsilon(self, gradients, trainable_variables):
        """ε(w) for ``first_step``; the SAM family (``sam.variants``) overrides it."""
        tvars = list(trainable_variables)
        return self.perturbation(gradients, [v.value for v in tvars], tvars)

    def _build_for(self, trainable_variables):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True

    def _refuse_replica_context(self, method):
        adapter().refuse_traced(method)
        if adapter().replica_count() > 1:
            raise ValueError(
                f"SAM.{method} assigns to the model's variables and cannot run inside "
                "strategy.run with several replicas; train with SAMModel or sam_train_step, "
                "which support tf.distribute (per-replica or synchronized perturbations)."
            )

    def first_step(self, gradients, trainable_variables):
        """Climb to the local maximum: w ← w + ε(w), remembering w in optimizer variables.

        The first call creates the copy of w (one optimizer variable per model variable, saved
        with the model only while a step is pending); later calls reuse it.

        Args:
            gradients: Gradients of the loss at w, aligned with ``trainable_variables``;
                None entries are skipped.
            trainable_variables: The variables to perturb (usually
                ``model.trainable_variables``).

        Raises:
            ValueError: (eagerly) when a previous ``first_step`` is still pending. In a
                ``tf.function`` the pending perturbation is undone first, so weights stay sound.
        """
        grads, tvars = list(gradients), list(trainable_variables)
        if len(grads) != len(tvars):
            raise ValueError(
                f"Got {len(grads)} gradients for {len(tvars)} variables; they must be aligned."
            )
        self._refuse_replica_context("first_step")
        self._build_for(tvars)
        if adapter().executing_eagerly() and _is_pending(self):
            raise ValueError(
                "SAM.first_step was called twice without second_step in between; call "
                "second_step (or restore()) to come back to w first."
            )
        self.restore(tvars)
        remembered = self._weight_copy()
        with adapter().no_grad():  # PyTorch: ε needs no autograd graph
            e_w = self._epsilon(grads, tvars)
        for v, e in zip(tvars, e_w):
            remembered[self._get_variable_index(v)].assign(v)  # remember w exactly
            if e is not None:
                v.assign_add(e)  # w + ε(w)
        self._pending.assign(1.0)

    def restore(self, trainable_variables):
        """Come back from w + ε(w) to the remembered w, bit-exactly; no-op if nothing is pending."""
        tvars = list(trainable_variables)
        if not self.built:
            return
        adapter().refuse_traced("restore")
        if adapter().executing_eagerly():
            if self._remembered is not None and _is_pending(self):
                self._undo(tvars)
            return
        # A graph (TensorFlow's) may run after another function's first_step: it must restore.
        self._weight_copy()
        adapter().run_if(self._pending.value > 0.5, lambda: self._undo(tvars))

    def _undo(self, tvars):
        for v in tvars:
            v.assign(self._remembered[self._get_variable_index(v)])
        self._pending.assign(0.0)

    def second_step(self, gradients, trainable_variables):
        """Come back to w and update it with the gradient taken at w + ε(w).

        Args:
            gradients: Gradients of the loss at w + ε(w), aligned with ``trainable_variables``.
            trainable_variables: The variables given to ``first_step``.

        Raises:
            ValueError: (eagerly) when no ``first_step`` is pending. In a ``tf.function`` that
                cannot be seen at trace time; there the restore is skipped when nothing is pending,
                so the weights are never overwritten with stale values.
        """
        grads, tvars = list(gradients), list(trainable_variables)
        self._refuse_replica_context("second_step")
        if not self.built or (adapter().executing_eagerly() and not _is_pending(self)):
            raise ValueError(
                "SAM.second_step was called without a pending first_step; call "
                "first_step(gradients, variables) first."
            )
        self.restore(tvars)
        with self.sam_update():
            self.apply(grads, tvars)

    def step(self, gradient_fn, variables) -> None:
        """One whole SAM (or ASAM) step in a custom loop, on any backend (eagerly).

        ``gradient_fn()`` returns the gradients of the loss at the variables' current values;
        it is called at w, then at w + ε(w) (assigned to the variables between the calls), and
        the base optimizer applies the second gradient at w (restored bit-exactly) — the same as
        ``first_step(gradient_fn(), v)`` then ``second_step(gradient_fn(), v)``; if the second
        call raises, w is restored first. The SAM family's members have their own ``step``.

        Example:

        ```python
        optimizer.step(lambda: gradients_of(model, x, y), model.trainable_variables)
        ```
        """
        variables = list(variables)
        self.first_step(gradient_fn(), variables)
        try:
            adversarial = gradient_fn()
        except BaseException:
            self.restore(variables)
            raise
        self.second_step(adversarial, variables)

    @contextlib.contextmanager
    def sam_update(self):
        """Marks ``apply`` calls as the update of a SAM step (``second_step``, the train step).

        A count, not a flag: under ``tf.distribute`` the replicas' steps are traced in threads
        whose ``with`` blocks interleave, and the merged update may run in yet another thread.
        """
        with _UPDATE_LOCK:
            self._sam_updates += 1
        try:
            yield
        finally:
            with _UPDATE_LOCK:
                self._sam_updates -= 1

    def apply(self, grads, trainable_variables=None):
        """Apply the base optimizer to ``grads``, the gradient taken at w + ε(w).

        Only the update of a SAM step may call it (``second_step``, ``sam_train_step``): one
        gradient per step would make it the base optimizer alone, so any other call (by the
        default ``keras.Model.train_step``, or ``apply``/``apply_gradients`` in a custom loop,
        also through a ``LossScaleOptimizer``) raises before anything is updated.

        Raises:
            ValueError: When called outside a SAM step.
        """
        if not self._sam_updates:
            if not adapter().executing_eagerly():
                forget_traced_train_step(self)  # so that the next call raises this too
            raise plain_error(ValueError(NOT_A_SAM_STEP))
        if trainable_variables is not None:
            self._build_for(list(trainable_variables))
        self.base_optimizer.apply(grads, trainable_variables)

    def apply_gradients(self, grads_and_vars):
        """``apply`` on ``(gradient, variable)`` pairs; raises outside a SAM step, as ``apply``."""
        grads, tvars = zip(*grads_and_vars)
        self.apply(list(grads), list(tvars))
        return self.iterations

    # -- saving ------------------------------------------------------------------------------

    def save_own_variables(self, store):
        """Save SAM's own state: its counters, the pending flag, and w while a step is pending.

        The base optimizer's state is saved by the base optimizer (Keras walks into it), and the
        copy of w only matters between ``first_step`` and ``second_step``, so a file of a model
        trained with SAM is as large as one trained with its base optimizer.
        """
        own = self._core_variables()
        if self._remembered is not None and float(self._pending.numpy()) > 0.5:
            own += self._remembered
        for i, variable in enumerate(own):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        """Load what ``save_own_variables`` saved (and files that saved the copy of w always)."""
        _load_own_variables(self, store)

    # -- serialization -----------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        del config["learning_rate"]  # it is the base optimizer's
        base = backend_neutral_config(serialize_keras_object(self.base_optimizer))
        config.update(
            {
                "base_optimizer": base,
                "rho": self.rho,
                "adaptive": self.adaptive,
                "eta": self.eta,
                "eps": self.eps,
                "sync_perturbations": self.sync_perturbations,
                "num_batch_splits": self.num_batch_splits,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base = backend_neutral_config(config.pop("base_optimizer"))  # files saved on PyTorch too
        base = deserialize_keras_object(base, custom_objects=custom_objects)
        return cls(base, **config)


def _load_own_variables(optimizer, store) -> None:
    """``SAM.load_own_variables``: the counters and pending flag, then w if a step is pending."""
    core = optimizer._core_variables()
    # The saved entries must look like SAM's own (shapes, integer or float): not, e.g., the
    # state of a LossScaleOptimizer around SAM (its counter first), loaded where none is made.
    saved = [np.asarray(store[str(i)]) for i in range(min(len(core), len(store.keys())))]
    saved = [(a.shape, a.dtype.kind) for a in saved]
    own = [(tuple(v.shape), np.dtype(keras.backend.standardize_dtype(v.dtype)).kind) for v in core]
    if not optimizer.built or saved != own:
        logger.warning(
            "Skipping variable loading for optimizer %r: it has %d variables of its own "
            "whereas the saved optimizer has %d of other shapes or count%s.",
            optimizer.name,
            len(core),
            len(store.keys()),
            "" if optimizer.built else " (it has not been built yet)",
        )
        return
    for i, variable in enumerate(core):
        variable.assign(store[str(i)])
    if float(optimizer._pending.numpy()) < 0.5:
        return  # nothing pending: a saved copy of w (older files) is stale
    n = len(core)
    if len(store.keys()) < n + len(optimizer._trainable_variables):
        logger.warning(
            "The saved optimizer %r has a pending first_step but not the weights to come "
            "back to; the step is dropped.",
            optimizer.name,
        )
        optimizer._pending.assign(0.0)
        return
    for i, variable in enumerate(optimizer._weight_copy()):
        variable.assign(store[str(n + i)])
