"""The SAM family on SAM's machinery: GSAM, LookSAM, FriendlySAM, ESAM, SAM-ON and schedules.

Every member is a ``SAM`` (same wrapping of the base optimizer, saving, mixed precision, refusal
of one-gradient steps) whose step is made of five small rules, each overridden where a paper
changes it:

* ``_direction(g)``: the vector the ascent follows (FriendlySAM: g − σ·m, m an EMA of gradients);
* ``_epsilon(d)``: ε = (ρ_t / β) · d / ‖d‖ over the perturbed variables only (SAM-ON selects them,
  ESAM's stochastic weight perturbation keeps each with probability β, GSAM's ρ_t follows the
  learning rate);
* ``_use_sam()``: whether this step takes the perturbed pass at all (schedules, LookSAM's k);
* ``_combine(g, g_adv)``: the update from both gradients (GSAM: g_adv − α·g⊥; LookSAM stores g_v);
* ``_plain(g)``: the update of a step without the perturbed pass (LookSAM: g + α‖g‖/‖g_v‖·g_v).

A step without the perturbed pass runs one forward/backward pass only: in a graph the two kinds
of step are the two branches of a ``tf.cond``, of which only one runs; eagerly Python picks one.

Backends: the maths is ``keras.ops`` and the adapters of ``sam._backend`` (TensorFlow's
IndexedSlices pass-through, its ``tf.cond`` and ``tf.distribute``; the stateless random draws).
On JAX and PyTorch ``step(gradient_fn, variables)`` and ``first_step``/``second_step`` run
eagerly (refused inside ``jax.jit``), and ``fit`` (``_fit_gradients``) runs the same rules on
the stateless passes of ``sam._portable_step`` (``_portable_fit_gradients``).

Three ways to train, as with ``SAM``: ``SAMModel`` / ``sam_train_step`` in ``fit`` (the perturbed
pass is a stateless call: BatchNorm statistics from the clean pass), ``step(gradient_fn,
variables)`` in a custom loop (every member), and ``first_step``/``second_step`` for the members
whose step is SAM's with another ε (FriendlySAM, SAM-ON, stochastic weight perturbation).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import keras
from keras import ops
from keras.saving import deserialize_keras_object, serialize_keras_object

from sam._backend import adapter
from sam._compat import compiled_loss, flat_losses, no_automatic_dependency_tracking, plain_error
from sam._roles import NORMALIZATION_ROLES
from sam.optimizer import (
    EPS,
    ETA,
    RHO,
    SAM,
    _check_number,
    _dense,
    all_finite,
    asam_perturbation,
    sam_perturbation,
)

logger = logging.getLogger("sam")

# SAM-ON's "normalization layers only": the γ and β of Keras's normalization layers, by the role
# table sam._roles (the roles "norm_scale" and "norm_offset"; in a custom loop that never called
# assign_roles, by the variable's name: gamma, beta, and the scale of a layer named *norm*).
NORMALIZATION = "normalization"
PERTURBED_CHOICES = {"all": None}

# LookSAM: an orthogonal part g_v with ‖g_v‖ ≤ ROUNDOFF_ULPS · ε_machine · ‖gₛ‖ is round-off of a
# gₛ parallel to g (ε_machine of the dtype the norms are taken in, float32 or float64).
ROUNDOFF_ULPS = 1024
_MACHINE_EPS = {"float32": 2.0**-23, "float64": 2.0**-52}

# Salts of the stateless random draws, so that schedules and ESAM's weight draws differ.
_SCHEDULE_SALT = 0
_SWP_SALT = 1


def _bad(name, rule, value):
    return ValueError(f"Argument `{name}` must be {rule}. Received: {name}={value!r}.")


def _check_fraction(name, value, *, closed_low=False):
    """A number in (0, 1] (or [0, 1] with ``closed_low``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (0 <= value <= 1 if closed_low else 0 < value <= 1)
    if not ok:
        raise _bad(name, "a number in [0, 1]" if closed_low else "a number in (0, 1]", value)
    return float(value)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(name, f"an integer >= {minimum}", value)
    return value


def _as(value, dtype):
    """``value`` in ``dtype``; a Python number exactly (a cast would pass it via float32)."""
    if isinstance(value, (int, float)):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


def _dtype(t) -> str:
    return keras.backend.standardize_dtype(t.dtype)


def _global_dot(a, b, dtype):
    terms = [
        ops.sum(ops.cast(x, dtype) * ops.cast(y, dtype))
        for x, y in zip(a, b)
        if x is not None and y is not None
    ]
    return adapter().add_n(terms) if terms else ops.convert_to_tensor(0.0, dtype)


def _norm_dtype(tensors):
    wide = any(t is not None and _dtype(t) == "float64" for t in tensors)
    return "float64" if wide else "float32"


def _wide_dtype():
    """float64 where the backend computes it (JAX only with ``jax_enable_x64``), else float32."""
    return "float64" if adapter().float64() else "float32"


def _rescale(grads, scaler, inner):
    """The inverse of ``train_step._unscale``: loss-scaled gradients for the LossScaleOptimizer."""
    factor = 1.0
    if scaler is not None:
        factor = scaler.dynamic_scale
    base = inner.base_optimizer if isinstance(inner, SAM) else inner
    if base.loss_scale_factor is not None:
        factor = factor * base.loss_scale_factor
    if isinstance(factor, float) and factor == 1.0:
        return grads
    return [None if g is None else g * _as(factor, g.dtype) for g in grads]


def _sparse_where_unchanged(update, dense, raw, member):
    """``update`` with every entry that is ``dense[i]`` itself given back as ``raw[i]``.

    The family's rules work on dense vectors (an Embedding's IndexedSlices summed per row), but
    where a member's update is the gradient unchanged, the base optimizer gets the gradient as
    Keras's own step gives it: its sparse path scales each slice before summing duplicate rows,
    so a dense update would differ from the base optimizer's by round-off (ρ = 0 bit for bit).
    A ``member`` without ``_passes_sparse`` gets every update dense.
    """
    if not member._passes_sparse:
        return [None if u is None else _dense(u) for u in update]
    return [
        r if (u is d and u is not None and adapter().is_sparse(r)) else u
        for u, d, r in zip(update, dense, raw)
    ] + list(update[len(dense) :])


def _branch(pred, true_fn, false_fn, present, raw=()):
    """``true_fn()`` or ``false_fn()`` (lists of gradients, None where not ``present``).

    A Python bool picks one function; eagerly the tensor's value does; in a graph a ``tf.cond``
    runs only the branch taken, so a step without the perturbed pass costs one pass. Where the
    raw gradient ``raw[i]`` is IndexedSlices, both branches give IndexedSlices (a dense update
    as all its rows), so that a pass-through gradient reaches the base optimizer as Keras's.
    """
    if isinstance(pred, bool):
        return true_fn() if pred else false_fn()
    backend = adapter()
    if backend.executing_eagerly():
        return true_fn() if bool(pred) else false_fn()
    like = {i: r for i, r in enumerate(raw) if backend.is_sparse(r)}

    def only_present(fn):
        def run():
            out = fn()
            return [
                backend.as_slices(out[i], like[i]) if i in like else ops.convert_to_tensor(out[i])
                for i in present
            ]

        return run

    values = iter(backend.cond(pred, only_present(true_fn), only_present(false_fn)))
    n = max(present) + 1 if present else 0
    out = [None] * n
    for i in present:
        out[i] = next(values)
    return out


def _dense_adv(adv_raw, grads):
    """g(w + ε) dense; zero where the perturbed pass gave None and the clean pass a gradient."""
    return [a if a is not None or g is None else ops.zeros_like(g)
            for a, g in zip(map(_dense, adv_raw), grads)]  # fmt: skip


def _recording(gradient_fn):
    """``gradient_fn`` run with the backend's gradient recording on (PyTorch), from a step whose
    own maths runs without it."""

    def run():
        with adapter().enable_grad():
            return gradient_fn()

    return run


def _apply_if_finite(member, update, tvars, finite):
    """The base optimizer's update of ``step``, skipped unless the clean gradient (``finite``)
    and the update are finite, as a ``LossScaleOptimizer`` skips an overflow: the weights and
    every optimizer variable stay as they were."""

    def apply():
        with member.sam_update():
            member.apply(update, tvars)

    ok = ops.logical_and(finite, all_finite(update))
    if not adapter().executing_eagerly():
        adapter().run_if(ok, apply)
    elif bool(ok):
        apply()


def _take_step(member, sam_step, plain_step, present, raw, tvars, finite):
    """The update of the step the member's schedule takes; its state committed where every
    pass is finite.

    State the SAM branch computes (LookSAM's g_v, ``member._carried()``) leaves the branch as
    outputs and is assigned after it: under ``jax.jit`` an assignment inside ``lax.cond``
    cannot leave the branch. The plain branch carries the variables' current values.
    """
    sparse = raw if member._passes_sparse else ()
    carried, n = member._carried(), len(tvars)

    def carrying(fn, staged):
        def run():
            out = list(fn())
            carry = member._carried_values(staged) if carried else []
            return out + [None] * (n - len(out)) + carry

        return run

    slots = list(present) + list(range(n, n + len(carried)))
    pred = member._use_sam()
    out = _branch(pred, carrying(sam_step, True), carrying(plain_step, False), slots, sparse)
    out = out + [None] * (n + len(carried) - len(out))
    final = out[:n]
    for variable, value in zip(carried, out[n:]):
        variable.assign(value)
    member._commit(ops.logical_and(finite, all_finite(final)))
    return final


@keras.saving.register_keras_serializable(package="sam")
class SAMSchedule:
    """When a SAM-family optimizer takes its perturbed pass; plain base steps otherwise.

    Exactly one mode (step t counts the optimizer's updates from 0, ``optimizer.iterations``):

    * ``every=k``: SAM on steps t ≡ 0 (mod k), i.e. 1/k of the steps (SAM-k in the LookSAM
      paper, arXiv 2203.02714, Sec. 3);
    * ``last_fraction=f, total_steps=T``: SAM only on steps t ≥ ⌈(1 − f)·T⌉ (SAM at the end of
      training, Zhou et al., arXiv 2310.04285: SAM in the last few epochs finds minima as flat as
      full SAM; the total number of steps is yours, Keras does not know it in advance);
    * ``probability=p, seed=s``: SAM with probability p on each step, drawn by
      ``tf.random.stateless_uniform([], seed=[s, t])`` (randomized sharpness-aware training,
      Zhao et al., "Randomized Sharpness-Aware Training for Boosting Computational Efficiency",
      arXiv 2203.09962): the same draws on every replica and after a reload.

    Construct with the class methods ``SAMSchedule.every_k(k)``, ``SAMSchedule.last(f, T)`` or
    ``SAMSchedule.random(p, seed=0)`` (or the keyword arguments).

    Raises:
        ValueError: unless exactly one mode is given with valid values.
    """

    def __init__(self, *, every=None, last_fraction=None, total_steps=None, probability=None,
                 seed=0):  # fmt: skip
        modes = [every is not None, last_fraction is not None, probability is not None]
        if sum(modes) != 1:
            raise ValueError(
                "SAMSchedule takes exactly one of `every`, `last_fraction` (with `total_steps`) "
                f"and `probability`. Received: every={every!r}, last_fraction={last_fraction!r}, "
                f"probability={probability!r}."
            )
        self.every = None if every is None else _check_int("every", every, 1)
        self.last_fraction = None
        self.total_steps = None
        if last_fraction is not None:
            self.last_fraction = _check_fraction("last_fraction", last_fraction)
            self.total_steps = _check_int("total_steps", total_steps, 1)
        elif total_steps is not None:
            raise _bad("total_steps", "given only with `last_fraction`", total_steps)
        self.probability = None
        if probability is not None:
            self.probability = _check_fraction("probability", probability, closed_low=True)
        self.seed = _check_int("seed", seed, 0)

    @classmethod
    def every_k(cls, k: int) -> SAMSchedule:
        return cls(every=k)

    @classmethod
    def last(cls, fraction: float, total_steps: int) -> SAMSchedule:
        return cls(last_fraction=fraction, total_steps=total_steps)

    @classmethod
    def random(cls, probability: float, seed: int = 0) -> SAMSchedule:
        return cls(probability=probability, seed=seed)

    @property
    def first_sam_step(self) -> int | None:
        """The first SAM step of ``last_fraction`` mode, ⌈(1 − f)·T⌉ (None in other modes)."""
        if self.last_fraction is None:
            return None
        return math.ceil((1.0 - self.last_fraction) * self.total_steps - 1e-9)

    def use_sam(self, step):
        """A bool tensor: whether step ``step`` (an integer tensor) takes the perturbed pass.

        ``probability`` mode draws a uniform number statelessly from (seed, step): on
        TensorFlow ``tf.random.stateless_uniform``, on JAX and PyTorch ``keras.random.uniform``
        with a key made from the pair (see ``sam._backend``'s ``uniform``); each backend's
        sequence is reproducible and continues after a reload (the step is saved), but the
        backends' sequences differ.
        """
        step = ops.convert_to_tensor(step)
        if self.every is not None:
            return ops.equal(ops.mod(step, self.every), 0)
        if self.last_fraction is not None:
            return ops.greater_equal(step, self.first_sam_step)
        return adapter().uniform([], self.seed + _SCHEDULE_SALT, step) < self.probability

    def sam_fraction(self) -> float:
        """The expected fraction of steps with the perturbed pass (``last``: of ``total_steps``)."""
        if self.every is not None:
            return 1.0 / self.every
        if self.last_fraction is not None:
            return (self.total_steps - self.first_sam_step) / self.total_steps
        return self.probability

    def get_config(self):
        return {
            "every": self.every,
            "last_fraction": self.last_fraction,
            "total_steps": self.total_steps,
            "probability": self.probability,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        if self.every is not None:
            return f"SAMSchedule(every={self.every})"
        if self.last_fraction is not None:
            return (
                f"SAMSchedule(last_fraction={self.last_fraction}, total_steps={self.total_steps})"
            )
        return f"SAMSchedule(probability={self.probability}, seed={self.seed})"


def _refuse_replicas(optimizer):
    """One ValueError when a member with one state for the model runs on several replicas."""
    if optimizer._replica_safe:
        return
    replicas = adapter().strategy_replica_count()
    if replicas > 1:
        raise plain_error(
            ValueError(
                f"{type(optimizer).__name__} keeps one state for the whole model "
                f"({optimizer._state_name}), which {replicas} replicas would each update with "
                "their own gradients; train it on one device (tf.distribute with one replica)."
            )
        )


def _resolve_perturbed(perturbed):
    """``perturbed`` as None (all), a compiled regex, or a callable; refuses anything else."""
    if perturbed is None:
        return None
    if perturbed == NORMALIZATION:
        return NORMALIZATION
    if isinstance(perturbed, str):
        pattern = PERTURBED_CHOICES.get(perturbed, perturbed)
        if pattern is None:
            return None
        try:
            return re.compile(pattern)
        except re.error as err:
            raise _bad(
                "perturbed",
                f"None, 'all', 'normalization', a regular expression on variable.path or a "
                f"callable (the pattern does not compile: {err})",
                perturbed,
            ) from None
    if callable(perturbed):
        return perturbed
    raise _bad(
        "perturbed",
        "None, 'all', 'normalization', a regular expression on variable.path or a callable "
        "taking a variable and returning a bool",
        perturbed,
    )


@keras.saving.register_keras_serializable(package="sam")
class SAMVariant(SAM):
    """SAM with the family's general options: which variables are perturbed, ESAM, schedules.

    Update (with none of the options, exactly ``SAM``):
    ε = (ρ/β) · M ⊙ d / ‖M ⊙ d‖₂,  w ← w − η · g(w + ε)  on a SAM step,  w ← w − η · g(w)  else,
    where d is the gradient g(w) (FriendlySAM changes it), M masks the variables that are
    perturbed (``perturbed``) and kept by ESAM's draw (``swp_beta`` = β), and a step is a SAM
    step as ``schedule`` says. ``adaptive=True`` makes it ASAM's ε (Kwon et al. 2021) on the
    same variables.

    Options:

    * ``perturbed`` (SAM-ON, Mueller et al. 2023, arXiv 2306.04226, "Normalization Layers Are
      All That Sharpness-Aware Minimization Needs"): only the selected variables are perturbed,
      and the norm ‖·‖ is over them; every variable is still updated with the gradient taken at
      w + ε. ``"normalization"`` selects the γ/β (and RMSNormalization's scale) of Keras's
      normalization layers by the layer that owns each variable (the role table
      ``sam._roles``, which ``fit`` reads through ``assign_roles``; in a custom loop that does
      not call ``assign_roles(model)``, by the variable's name: ``gamma``, ``beta``, and
      ``scale`` in a layer whose name contains "norm"); any other string is a regular
      expression searched in ``variable.path``; a callable gets the variable and returns a
      bool. The paper perturbs the affine parameters of BatchNorm/LayerNorm.
    * ``swp_beta`` = β (ESAM's stochastic weight perturbation, Du et al. 2021,
      arXiv 2110.03141; official code dydjw9/Efficient_SAM, ``utils/Esam.py``): on each SAM
      step every variable (tensor) is perturbed with probability β and ε is scaled by 1/β, as
      the official code does (the paper draws a mask per weight; the code per parameter tensor,
      which is what saves work). The draw is ``tf.random.stateless_uniform([n_variables],
      seed=[seed + 1, t])`` < β, t the step, so it is reproducible and equal on every replica
      (on JAX and PyTorch ``keras.random.uniform`` keyed by the same pair: reproducible and
      continued after a reload too, but another sequence than TensorFlow's).
      Departure: the official code skips the unselected tensors' first-pass gradients to save
      time; here the clean gradient is computed in full (it is the loss's gradient that ``fit``
      needs anyway), so SWP changes the update, not the cost.
    * ``sds_gamma`` = γ (ESAM's sharpness-sensitive data selection): the perturbed pass first
      evaluates every example's loss at w + ε (forward only), keeps the ⌊γ·n⌋ examples
      (at least 1) whose loss rose most, L(w + ε, xᵢ) − L(w, xᵢ), and takes the gradient of the
      mean loss over them (with their sample weights and the model's regularization losses).
      The official code keeps those strictly above the ⌊γ·n⌋-th largest rise (one fewer, ties
      aside); we keep exactly ⌊γ·n⌋ (``tf.math.top_k``). BatchNorm in the subset's pass
      normalizes with the subset's statistics, as in the official code; the moving statistics
      stay those of the clean pass. Needs the per-example loss, so only in ``fit``
      (``sam_train_step``/``SAMModel``) and for a model compiled with one loss.
    * ``schedule``: a ``SAMSchedule`` (every k steps, the last fraction of training, or with
      probability p): the other steps are plain base-optimizer steps with one pass.

    Args:
        base_optimizer: The ``keras.optimizers.Optimizer`` that makes the update.
        rho: Radius ρ. Defaults to 0.05 (SAM's CIFAR default).
        adaptive: ASAM's ε (T = |w| + η on kernels). Defaults to False.
        eta: ASAM's η. Defaults to 0.01.
        eps: Added to norms. Defaults to 1e-12.
        perturbed: Which variables are perturbed (see above). Defaults to None (all).
        swp_beta: ESAM's β in (0, 1], or None (off). Defaults to None.
        sds_gamma: ESAM's γ in (0, 1], or None (off). Defaults to None.
        schedule: A ``SAMSchedule`` or None (SAM on every step). Defaults to None.
        seed: Seed of ESAM's weight draws. Defaults to 0.
        sync_perturbations: As ``SAM``: under ``tf.distribute``, every replica perturbs with
            the all-reduced gradient. Defaults to False.
        name: Defaults to the class name in lower case.

    Raises:
        ValueError: For an argument out of its range (naming it, the rule and the value);
            ``num_batch_splits`` other than 1 (m-sharpness is ``SAM``'s only).

    References:
        Foret et al., SAM, https://arxiv.org/abs/2010.01412
        Mueller et al., SAM-ON, https://arxiv.org/abs/2306.04226
        Du et al., ESAM, https://arxiv.org/abs/2110.03141
    """

    # Members whose state is one value per model (not per replica) refuse tf.distribute.
    _replica_safe = True
    # GSAM decomposes the global gradients under sync_perturbations.
    _needs_global_adv = False

    def __init__(
        self,
        base_optimizer,
        rho=RHO,
        adaptive=False,
        eta=ETA,
        eps=EPS,
        *,
        perturbed=None,
        swp_beta=None,
        sds_gamma=None,
        schedule=None,
        seed=0,
        sync_perturbations=False,
        num_batch_splits=1,
        name=None,
        **kwargs,
    ):
        if num_batch_splits != 1:
            raise _bad(
                "num_batch_splits",
                f"1 for {type(self).__name__} (m-sharpness is offered by SAM only)",
                num_batch_splits,
            )
        super().__init__(
            base_optimizer,
            rho=rho,
            adaptive=adaptive,
            eta=eta,
            eps=eps,
            sync_perturbations=sync_perturbations,
            name=name or type(self).__name__.lower(),
            **kwargs,
        )
        self._perturbed_rule = _resolve_perturbed(perturbed)
        self.perturbed = perturbed
        self.swp_beta = None if swp_beta is None else _check_fraction("swp_beta", swp_beta)
        self.sds_gamma = None if sds_gamma is None else _check_fraction("sds_gamma", sds_gamma)
        if schedule is not None and not isinstance(schedule, SAMSchedule):
            raise _bad("schedule", "a sam.SAMSchedule or None", schedule)
        self.schedule = schedule
        self.seed = _check_int("seed", seed, 0)
        self._mask = None

    # -- state -------------------------------------------------------------------------------

    @no_automatic_dependency_tracking
    def build(self, var_list):
        """SAM's state, the perturbed-variable mask, then the member's own state."""
        super().build(var_list)
        mask = [self._is_perturbed(v) for v in self._trainable_variables]
        if not any(mask):
            raise _bad(
                "perturbed",
                f"a selection of at least one of the {len(mask)} trainable variables",
                self.perturbed,
            )
        self._mask = mask
        with keras.name_scope(self.name, caller=self):
            self._build_state(self._trainable_variables)

    def _build_state(self, variables):
        """Per-member optimizer variables (saved with the model)."""

    def assign_roles(self, model) -> None:
        """As ``SAM.assign_roles``; the perturbed selection is made again from the roles."""
        super().assign_roles(model)
        if self._mask is not None:
            self._mask = [self._is_perturbed(v) for v in self._trainable_variables]

    def _is_perturbed(self, variable):
        rule = self._perturbed_rule
        if rule is None:
            return True
        if rule == NORMALIZATION:
            return self.variable_role(variable) in NORMALIZATION_ROLES
        if isinstance(rule, re.Pattern):
            return rule.search(variable.path) is not None
        return bool(rule(variable))

    def perturbed_variables(self, variables=None):
        """The variables this optimizer perturbs (of ``variables``, or of those it was built on)."""
        variables = self._trainable_variables if variables is None else list(variables)
        return [v for v in variables if self._is_perturbed(v)]

    # -- the five rules ------------------------------------------------------------------------

    def _step(self):
        return self.iterations

    def _use_sam(self):
        """True (a Python bool) or a bool tensor: does this step take the perturbed pass?"""
        if self.schedule is None:
            return True
        return self.schedule.use_sam(self._step())

    def _direction(self, grads, tvars, finite):
        """The vector the ascent follows; may stage a state update (``_commit`` applies it)."""
        return grads

    def _commit(self, ok):
        """Apply the state update ``_direction`` staged, where ``ok`` (every pass finite)."""

    def _carried(self) -> list:
        """Variables whose new values the SAM branch computes (``_take_step``)."""
        return []

    def _rho(self):
        """ρ of this step (a float or a scalar tensor)."""
        return self.rho

    def _epsilon_from(self, direction, tvars):
        """ε = (ρ_t/β) · M ⊙ d / ‖M ⊙ d‖ (ASAM's T² d / ‖T d‖ when adaptive); no state change."""
        d = [
            None if (g is None or not self._mask[self._get_variable_index(v)]) else _dense(g)
            for g, v in zip(direction, tvars)
        ]
        scale = 1.0
        if self.swp_beta is not None and self.swp_beta < 1.0:
            n = len(self._trainable_variables)
            kept = adapter().uniform([n], self.seed + _SWP_SALT, self._step()) < self.swp_beta
            d = [
                None
                if g is None
                else ops.where(kept[self._get_variable_index(v)], g, ops.zeros_like(g))
                for g, v in zip(d, tvars)
            ]
            scale = 1.0 / self.swp_beta
        if self.adaptive:
            unit = asam_perturbation(d, [v.value for v in tvars], rho=1.0, eta=self.eta,
                                     eps=self.eps, scaled=self.asam_scaled(tvars))  # fmt: skip
        else:
            unit = sam_perturbation(d, rho=1.0, eps=self.eps)
        rho = self._rho()
        if isinstance(rho, (int, float)):
            factor = float(rho) * scale
            return [None if e is None else e * _as(factor, e.dtype) for e in unit]
        return [None if e is None else e * _as(rho, e.dtype) * _as(scale, e.dtype) for e in unit]

    def _epsilon(self, gradients, trainable_variables):
        """ε for ``first_step``: the direction (state updated), then the scaled ε."""
        grads = [_dense(g) for g in gradients]
        finite = all_finite(grads)
        d = self._direction(grads, list(trainable_variables), finite)
        # first_step/second_step may run in separate functions: the state cannot wait for the
        # second pass here, so it changes when the clean gradient is finite.
        self._commit(finite)
        return self._epsilon_from(d, list(trainable_variables))

    def _combine(self, grads, adv, tvars, finite):
        """The update of a SAM step from g(w) and g(w + ε). SAM: g(w + ε)."""
        return adv

    # False for a member whose update is a combination of dense vectors on some steps: all its
    # updates stay dense, so the base optimizer sees one form on every step.
    _passes_sparse = True

    def _plain(self, grads, tvars, finite):
        """The update of a step without the perturbed pass. Plain base step: g(w)."""
        return grads

    # -- custom loops --------------------------------------------------------------------------

    def _two_call_problem(self):
        """Why first_step/second_step cannot make this optimizer's step, or None."""
        if self.schedule is not None:
            return "a schedule decides per step whether there is a second pass"
        if self.sds_gamma is not None:
            return "data selection needs each example's loss"
        return None

    def first_step(self, gradients, trainable_variables):
        """As ``SAM.first_step`` with this member's ε; refused where the step needs more.

        Raises:
            ValueError: For members whose step is not "SAM with another ε" (GSAM, LookSAM,
                a schedule, data selection): use ``step(gradient_fn, variables)`` or ``fit``.
        """
        problem = self._two_call_problem()
        if problem is not None:
            raise ValueError(
                f"{type(self).__name__}.first_step/second_step cannot make this optimizer's "
                f"step ({problem}); call step(gradient_fn, variables) in a custom loop, or "
                "train with sam.SAMModel or sam.sam_train_step."
            )
        self._refuse_replicas()
        super().first_step(gradients, trainable_variables)

    def _refuse_replicas(self):
        _refuse_replicas(self)

    _state_name = ""

    def step(self, gradient_fn: Callable[[], list], variables) -> None:
        """One whole step of this member in a custom loop.

        ``gradient_fn()`` must return the gradients of the loss at the variables' current values
        (one per variable, None for unused ones); it is called once on a step without the
        perturbed pass and twice on a SAM step (the second time at w + ε, which is assigned to
        the variables and restored bit-exactly afterwards). Every forward pass it runs in
        training mode updates BatchNorm statistics, as in any custom SAM loop: to keep those of
        the clean pass only, train with ``SAMModel``. The gradients are the true ones: scale the
        loss yourself under a ``LossScaleOptimizer`` (``fit`` does it for you). A step whose
        clean gradient or update is not finite changes nothing (weights and optimizer state).
        Works eagerly on every backend (JAX: outside ``jax.jit``; PyTorch: ``gradient_fn`` runs
        with autograd on), and on TensorFlow in a ``tf.function`` and under XLA too, where the
        two kinds of step are the branches of a ``tf.cond``.

        Example:

        ```python
        def gradients():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        optimizer.step(gradients, model.trainable_variables)
        ```

        On JAX and PyTorch ``gradients`` returns the backend's gradients the same way (e.g.
        ``jax.grad`` of the loss of ``model.stateless_call``; ``torch.autograd.grad``).

        Raises:
            ValueError: With ``sds_gamma`` (use ``fit``), inside ``strategy.run`` with several
                replicas, or when the gradients are not aligned with the variables.
        """
        if self.sds_gamma is not None:
            raise ValueError(
                "Argument `sds_gamma` needs each example's loss, which step(gradient_fn, ...) "
                "does not see; train with sam.SAMModel or sam.sam_train_step. "
                f"Received: sds_gamma={self.sds_gamma}."
            )
        tvars = list(variables)
        self._refuse_replica_context("step")
        self._build_for(tvars)
        with adapter().no_grad():  # PyTorch: the step's own maths records no autograd graph
            _custom_step(self, _recording(gradient_fn), tvars)

    # -- fit -----------------------------------------------------------------------------------

    def _fit_gradients(self, model, x, y, sample_weight, scaler, inner):
        """``sam_train_step``'s gradients for this member (called by ``train_step``).

        Returns the loss-scaled update for ``optimizer.apply``, the clean predictions and
        whether the clean gradients were finite.
        """
        if keras.backend.backend() != "tensorflow":
            return _portable_fit_gradients(self, model, x, y, sample_weight, scaler, inner)
        import tensorflow as tf

        from sam.train_step import _replica_count, _unscale, clean_pass, perturbed_pass

        self._refuse_replicas()
        tvars = model.trainable_variables
        state, y_pred, raw = clean_pass(model, x, y, sample_weight, scaler, inner)
        # Dense gradients: an Embedding's IndexedSlices cannot enter GSAM's or LookSAM's products.
        local = [_dense(g) for g in raw]
        grads = list(local)
        ctx = tf.distribute.get_replica_context()
        synced = self.sync_perturbations and ctx is not None and _replica_count() > 1
        present = [i for i, g in enumerate(grads) if g is not None]
        if synced:
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            for i, g in zip(present, reduced):
                grads[i] = g
        finite = all_finite(grads)
        direction = self._direction(grads, tvars, finite)

        def sam_step():
            e_w = self._epsilon_from(direction, tvars)
            weights = [v.value for v in tvars]
            perturbed = [w if e is None else w + e for w, e in zip(weights, e_w)]  # w + ε
            mapping = list(zip(tvars, perturbed)) + list(zip(model.non_trainable_variables, state))
            if self.sds_gamma is not None:
                args = (model, x, y, sample_weight, y_pred, perturbed, mapping)
                adv = _selected_gradients(self.sds_gamma, *args)
            else:
                adv = perturbed_pass(model, x, y, sample_weight, perturbed, mapping, clean=local)
            adv_raw = _unscale(adv, scaler, inner)
            adv = _dense_adv(adv_raw, grads)
            if synced and self._needs_global_adv:
                reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [adv[i] for i in present])
                for i, a in zip(present, reduced):
                    adv[i] = a
                out = self._combine(grads, adv, tvars, finite)
                share = 1.0 / _replica_count()  # apply sums the replicas' updates
                return [None if g is None else g * _as(share, g.dtype) for g in out]
            update = self._combine(grads, adv, tvars, finite)
            return _sparse_where_unchanged(update, adv, adv_raw, self)

        def plain_step():
            update = self._plain(local if synced else grads, tvars, finite)
            return _sparse_where_unchanged(update, local, raw, self)  # grads[i] is local[i]

        final = _take_step(self, sam_step, plain_step, present, raw, tvars, finite)
        return _rescale(final, scaler, inner), y_pred, finite

    # -- serialization -------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        del config["num_batch_splits"]
        perturbed = self.perturbed
        if callable(perturbed):
            perturbed = serialize_keras_object(perturbed)
        config.update(
            {
                "perturbed": perturbed,
                "swp_beta": self.swp_beta,
                "sds_gamma": self.sds_gamma,
                "schedule": None
                if self.schedule is None
                else serialize_keras_object(self.schedule),
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base = deserialize_keras_object(config.pop("base_optimizer"), custom_objects=custom_objects)
        for key in ("schedule", "perturbed"):
            if isinstance(config.get(key), dict):
                config[key] = deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(base, **config)


def _custom_step(self, gradient_fn, tvars):
    """``SAMVariant.step``'s body (``self`` the member): both kinds of step as the branches of
    ``_take_step``, then the update where it is finite."""
    raw = list(gradient_fn())
    grads = [_dense(g) for g in raw]
    if len(grads) != len(tvars):
        raise ValueError(
            f"Got {len(grads)} gradients for {len(tvars)} variables; they must be aligned."
        )
    finite = all_finite(grads)
    present = [i for i, g in enumerate(grads) if g is not None]
    direction = self._direction(grads, tvars, finite)

    def sam_step():
        e_w = self._epsilon_from(direction, tvars)
        w = [ops.copy(v.value) for v in tvars]  # read now, before the ascent
        for v, e in zip(tvars, e_w):
            if e is not None:
                v.assign_add(e)  # w + ε
        adv_raw = list(gradient_fn())
        for v, wi in zip(tvars, w):
            v.assign(wi)  # back to w, bit-exactly
        adv = _dense_adv(adv_raw, grads)
        update = self._combine(grads, adv, tvars, finite)
        return _sparse_where_unchanged(update, adv, adv_raw, self)

    def plain_step():
        return _sparse_where_unchanged(self._plain(grads, tvars, finite), grads, raw, self)

    final = _take_step(self, sam_step, plain_step, present, raw, tvars, finite)
    _apply_if_finite(self, final, tvars, finite)


def _portable_fit_gradients(member, model, x, y, sample_weight, scaler, inner):
    """``SAMVariant._fit_gradients`` on JAX and PyTorch: the same rule on the stateless passes
    of ``sam._portable_step`` (no ``tf.distribute``: a JAX ``DataParallel`` step is one SPMD
    program whose gradients are the global batch's)."""
    from sam._portable_step import portable_clean_pass, portable_perturbed_pass, unscale

    tvars = model.trainable_variables
    state, y_pred, raw = portable_clean_pass(model, x, y, sample_weight, scaler, inner)
    grads = [_dense(g) for g in raw]
    present = [i for i, g in enumerate(grads) if g is not None]
    finite = all_finite(grads)
    direction = member._direction(grads, tvars, finite)

    def sam_step():
        e_w = member._epsilon_from(direction, tvars)
        weights = [v.value for v in tvars]
        perturbed = [w if e is None else w + e for w, e in zip(weights, e_w)]  # w + ε

        def gradients(xs, ys, ws):
            return portable_perturbed_pass(model, xs, ys, ws, perturbed, state)

        if member.sds_gamma is not None:
            mapping = list(zip(tvars, perturbed))
            mapping += list(zip(model.non_trainable_variables, state.values))
            args = (model, x, y, sample_weight, y_pred, perturbed, mapping)
            adv = _selected_gradients(member.sds_gamma, *args, grad=gradients)
        else:
            adv = gradients(x, y, sample_weight)
        adv = _dense_adv(unscale(adv, scaler, inner), grads)
        return member._combine(grads, adv, tvars, finite)

    def plain_step():
        return member._plain(grads, tvars, finite)

    final = _take_step(member, sam_step, plain_step, present, raw, tvars, finite)
    return _rescale(final, scaler, inner), y_pred, finite


def _selected_gradients(gamma, model, x, y, sample_weight, y_pred, perturbed, mapping, grad=None):
    """ESAM's SDS: the loss-scaled gradient at w + ε of the ⌊γn⌋ examples whose loss rose most.

    ``grad(x, y, sample_weight)`` is the perturbed pass on the chosen examples (TensorFlow's
    ``perturbed_pass`` when None).
    """
    per_example = _per_example_loss(model)
    before = ops.stop_gradient(per_example(y, y_pred))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        after = per_example(y, model(x, training=True))
    rise = ops.cast(after, "float32") - ops.cast(before, "float32")
    chosen = ops.top_k(rise, k=_selected_count(rise, gamma), sorted=False)[1]

    def take(structure):
        return keras.tree.map_structure(
            lambda t: None if t is None else ops.take(t, chosen, axis=0), structure
        )

    if grad is None:
        from sam.train_step import perturbed_pass

        return perturbed_pass(model, take(x), take(y), take(sample_weight), perturbed, mapping)
    return grad(take(x), take(y), take(sample_weight))


def _selected_count(rise, gamma):
    """k = max(⌊γn⌋, 1): a Python int where the batch size is static (JAX needs one), else a
    tensor (a TensorFlow graph traced for any batch size)."""
    n = rise.shape[0]
    if isinstance(n, int):
        return max(math.floor(n * gamma), 1)
    n = ops.cast(ops.shape(rise)[0], "float64")
    return ops.maximum(ops.cast(ops.floor(n * gamma), "int32"), 1)


def _per_example_loss(model):
    """The compiled loss of a one-loss model as a function (y, y_pred) -> loss per example."""
    compile_loss = compiled_loss(model)
    entries = flat_losses(compile_loss) if compile_loss is not None else []
    if len(entries) != 1:
        raise plain_error(
            ValueError(
                "Argument `sds_gamma` needs the model compiled with exactly one loss (to rank "
                f"examples by their loss); this model has {len(entries)}. Turn data selection "
                "off with ESAM(..., gamma=1) (or SAMVariant without sds_gamma)."
            )
        )
    loss = entries[0].loss

    def per_example(y_true, y_pred):
        values = ops.convert_to_tensor(loss.call(y_true, y_pred))
        if len(values.shape) > 1:
            values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
        return values

    return per_example


@keras.saving.register_keras_serializable(package="sam")
class GSAM(SAMVariant):
    """Surrogate-gap guided SAM (GSAM): descend the perturbed loss, ascend the surrogate gap.

    Update: g_⊥ = g − (g·ĝₐ) ĝₐ with ĝₐ = gₐ/‖gₐ‖, gₐ = g(w + ε), ε = ρ_t g/‖g‖;
    w ← w − η_t (gₐ − α g_⊥), with ρ_t = ρ_min + (ρ − ρ_min)(η_t − η_min)/(η_max − η_min).

    g_⊥ is the component of the clean gradient g = g(w) orthogonal to gₐ; subtracting α·g_⊥
    moves against the surrogate gap h = f(w + ε) − f(w) without changing the descent on
    f(w + ε) to first order. α = 0 and ρ_min = ρ is SAM. This follows the official code
    (google-research/big_vision, ``trainers/proj/gsam/gsam.py``, ``gsam_gradient`` with
    ``minimize_fp=True``): the decomposition uses the global vectors of all variables. One
    departure: g·ĝₐ ĝₐ is computed as (g·gₐ)/‖gₐ‖² gₐ exactly (0 where gₐ = 0), where the official
    code normalizes gₐ by ‖gₐ‖ + eps: with eps the projection misses part of g whenever ‖gₐ‖ is
    near √eps (a vanishing gradient), and at ρ = 0 (gₐ = g) g_⊥ is not 0. So ρ = 0 with any α is
    the base optimizer, bit for bit.

    ρ schedule: with ``rho_min`` (and ``lr_max``, ``lr_min``) ρ follows the base optimizer's
    current learning rate η_t linearly, as the paper's Algorithm 1 and the official code do,
    clamped to [ρ_min, ρ]: a warm-up from below η_min gives ρ_min (the official code's ρ_t is
    negative there, an ascent that descends), a rate above η_max gives ρ; without ``rho_min``
    ρ is constant.

    tf.distribute: as the official code, each replica perturbs and decomposes with its own
    gradients and the replicas' GSAM gradients are averaged; with ``sync_perturbations=True``
    both gradients are all-reduced first and the step equals single-device GSAM on the global
    batch.

    Args:
        base_optimizer: The optimizer that makes the update.
        rho: ρ (ρ_max when ``rho_min`` is set). Defaults to 0.05.
        alpha: α ≥ 0. Defaults to 0.1: the paper tunes α per model (with ρ) and gives no
            single default; 0.1 is a middle value of the ones it reports.
        rho_min: ρ_min of the schedule, or None (constant ρ). Defaults to None.
        lr_max: η_max of the schedule, > ``lr_min`` (required with ``rho_min``). Defaults to
            None.
        lr_min: η_min ≥ 0 of the schedule (required with ``rho_min``). Defaults to None.
        **kwargs: The options of ``SAMVariant`` (adaptive, perturbed, swp_beta, sds_gamma,
            schedule, seed, eps, sync_perturbations, name).

    Raises:
        ValueError: ``alpha`` < 0; ``rho_min`` outside [0, rho] or without lr_max > lr_min ≥ 0.

    References:
        Zhuang et al., Surrogate Gap Minimization Improves Sharpness-Aware Training,
        https://arxiv.org/abs/2203.08065
    """

    _needs_global_adv = True
    _passes_sparse = False

    def __init__(self, base_optimizer, rho=RHO, alpha=0.1, *, rho_min=None, lr_max=None,
                 lr_min=None, **kwargs):  # fmt: skip
        super().__init__(base_optimizer, rho=rho, **kwargs)
        _check_number("alpha", alpha, minimum=0)
        self.alpha = float(alpha)
        self.rho_min = rho_min
        self.lr_max = lr_max
        self.lr_min = lr_min
        if rho_min is not None:
            _check_number("rho_min", rho_min, minimum=0)
            if rho_min > rho:
                raise _bad("rho_min", f"<= rho ({rho})", rho_min)
            _check_number("lr_min", lr_min, minimum=0)
            _check_number("lr_max", lr_max, minimum=lr_min, strict=True)
            self.rho_min, self.lr_max, self.lr_min = float(rho_min), float(lr_max), float(lr_min)
        elif lr_max is not None or lr_min is not None:
            raise _bad("rho_min", "given with `lr_max` and `lr_min`", rho_min)

    def _two_call_problem(self):
        return super()._two_call_problem() or "GSAM's update needs the clean gradient too"

    def _rho(self):
        if self.rho_min is None:
            return self.rho
        lr = ops.cast(self.learning_rate, _wide_dtype())
        # Clamped: a warm-up below lr_min would make ρ_t negative (an ascent that descends),
        # a rate above lr_max would take ρ_t beyond ρ.
        frac = ops.clip((lr - self.lr_min) / (self.lr_max - self.lr_min), 0.0, 1.0)
        return self.rho_min + (self.rho - self.rho_min) * frac

    def _combine(self, grads, adv, tvars, finite):
        dtype = _norm_dtype(adv)
        # (g·gₐ)/‖gₐ‖², the length of g along ĝₐ divided by ‖gₐ‖; 0 where gₐ = 0. Exactly, not
        # over ‖gₐ‖² + eps as the official code: eps would shrink every update whose ‖gₐ‖² is
        # near eps, and g_⊥ of gₐ = g (ρ = 0) would not be 0.
        coef = ops.divide_no_nan(_global_dot(grads, adv, dtype), _global_dot(adv, adv, dtype))
        out = []
        for g, a in zip(grads, adv):
            if a is None or g is None:
                out.append(a)
                continue
            perp = g - ops.cast(coef, g.dtype) * a  # g_⊥
            out.append(a - _as(self.alpha, a.dtype) * perp)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {"alpha": self.alpha, "rho_min": self.rho_min, "lr_max": self.lr_max,
             "lr_min": self.lr_min}
        )  # fmt: skip
        return config


@keras.saving.register_keras_serializable(package="sam")
class LookSAM(SAMVariant):
    """LookSAM: the SAM gradient every k steps, its reused orthogonal part in between.

    Update: on steps t ≡ 0 (mod k): gₛ = g(w + ε), ε = ρ g/‖g‖, and store
    g_v = gₛ − (g·gₛ/‖g‖²) g; on other steps: gₛ = g + α (‖g‖/‖g_v‖) g_v; then w ← w − η gₛ.

    g = g(w) is the clean gradient and g_v the component of the SAM gradient orthogonal to it
    (the paper's Algorithm 1, with global vectors over all variables). Only one step in k takes
    the second pass, so a step costs about (k + 1)/k passes. The stored g_v is an optimizer
    variable per model variable, saved with the model.

    Round-off: when gₛ is parallel to g (an isotropic quadratic, or ρ = 0) the exact g_v is 0,
    but the computed one is float noise, which the plain steps would scale up to α‖g‖. A g_v
    with ‖g_v‖ ≤ 1024 ε_mach ‖gₛ‖ (ε_mach = 2⁻²³ for float32 gradients, 2⁻⁵² for float64;
    ``ROUNDOFF_ULPS``) is stored as 0, and a plain step with g_v = 0 uses g itself; so LookSAM
    with ρ = 0 is its base optimizer.

    Departures: the paper has no official code; the layer-wise Look-LayerSAM of the same paper
    (for large batches) is not offered. A step whose perturbed
    gradient is not finite (a loss-scale overflow) keeps the previous g_v. tf.distribute with
    several replicas is refused (one g_v for the model, which per-replica gradients would
    each overwrite).

    Args:
        base_optimizer: The optimizer that makes the update.
        rho: ρ. Defaults to 0.05 (SAM's; the paper tunes it per model).
        k: Steps per SAM gradient. Defaults to 5 (the paper's main setting).
        alpha: α. Defaults to 0.7 (the paper's setting for ViTs).
        **kwargs: ``SAMVariant`` options but ``schedule`` (LookSAM is its own schedule).

    Raises:
        ValueError: ``k`` not an integer >= 1, ``alpha`` < 0, a ``schedule``.

    References:
        Liu et al., Towards Efficient and Scalable Sharpness-Aware Minimization,
        https://arxiv.org/abs/2203.02714
    """

    _replica_safe = False
    _state_name = "the stored orthogonal gradient g_v"
    _passes_sparse = False

    def __init__(self, base_optimizer, rho=RHO, k=5, alpha=0.7, **kwargs):
        if kwargs.get("schedule") is not None:
            raise _bad("schedule", "None for LookSAM (it reuses g_v between its SAM steps)",
                       kwargs["schedule"])  # fmt: skip
        kwargs.pop("schedule", None)
        super().__init__(base_optimizer, rho=rho, **kwargs)
        self.k = _check_int("k", k, 1)
        _check_number("alpha", alpha, minimum=0)
        self.alpha = float(alpha)
        self._g_v = None

    def _build_state(self, variables):
        self._g_v = [self.add_variable_from_reference(v, name="looksam_g_v") for v in variables]

    def _two_call_problem(self):
        return "LookSAM takes the second pass on one step in k"

    def _use_sam(self):
        return ops.equal(ops.mod(ops.convert_to_tensor(self._step()), self.k), 0)

    def _combine(self, grads, adv, tvars, finite):
        dtype = _norm_dtype(grads)
        gg = _global_dot(grads, grads, dtype)
        coef = _global_dot(grads, adv, dtype) / ops.where(gg > 0, gg, ops.ones_like(gg))
        pairs = [(g, a, v) for g, a, v in zip(grads, adv, tvars) if g is not None and a is not None]
        new = [a - ops.cast(coef, g.dtype) * g for g, a, _ in pairs]  # gₛ − (g·gₛ/‖g‖²) g
        # Round-off, not a direction: gₛ parallel to g leaves float noise that _plain would scale
        # up to α‖g‖. An orthogonal part within ROUNDOFF_ULPS ulp of ‖gₛ‖ is stored as zero.
        tol = ops.convert_to_tensor(ROUNDOFF_ULPS * _MACHINE_EPS[dtype], dtype)
        noise = ops.sqrt(_global_dot(new, new, dtype)) <= tol * ops.sqrt(
            _global_dot([a for _, a, _ in pairs], [a for _, a, _ in pairs], dtype)
        )
        keep = ops.logical_and(finite, all_finite(adv))
        staged = self.__dict__.setdefault("_staged_g_v", {})  # assigned by _take_step
        for (_, _, v), n in zip(pairs, new):
            g_v = self._g_v[self._get_variable_index(v)]
            n = ops.where(noise, ops.zeros_like(n), n)
            staged[id(g_v)] = ops.where(keep, ops.cast(n, g_v.dtype), g_v.value)
        return adv

    def _carried(self) -> list:
        return list(self._g_v or ())

    def _carried_values(self, staged: bool) -> list:
        """g_v's new values from the SAM branch (``staged``), or its current ones."""
        new = self.__dict__.pop("_staged_g_v", {}) if staged else {}
        return [new.get(id(g_v), g_v.value) for g_v in self._g_v]

    def _plain(self, grads, tvars, finite):
        g_v = [None if g is None else self._g_v[self._get_variable_index(v)].value
               for g, v in zip(grads, tvars)]  # fmt: skip
        dtype = _norm_dtype(grads)
        norm_v = ops.sqrt(_global_dot(g_v, g_v, dtype))
        ratio = ops.where(
            norm_v > 0,
            ops.sqrt(_global_dot(grads, grads, dtype)) / ops.where(norm_v > 0, norm_v, 1.0),
            ops.zeros_like(norm_v),
        )
        return [
            None if g is None else g + ops.cast(self.alpha * ratio, g.dtype) * ops.cast(gv, g.dtype)
            for g, gv in zip(grads, g_v)
        ]

    def get_config(self):
        config = super().get_config()
        del config["schedule"]
        config.update({"k": self.k, "alpha": self.alpha})
        return config


@keras.saving.register_keras_serializable(package="sam")
class FriendlySAM(SAMVariant):
    """Friendly SAM (F-SAM): perturb along the gradient minus its moving average.

    Update: d = g − σ m, then m ← λ m + (1 − λ) g; ε = ρ d/‖d‖; w ← w − η g(w + ε).
    On the first step m ← g and d = g.

    The moving average m of past gradients estimates the full-batch gradient, whose component
    the paper finds harmful in SAM's perturbation; d keeps the batch-specific part. This follows
    the official code (github.com/nblt/F-SAM, ``utils.py``, ``FriendlySAM.first_step``), which
    subtracts the *previous* average and then updates it, and starts the average at the first
    gradient without subtracting anything. (The paper's Algorithm 1 writes the average updated
    with the current gradient before the subtraction, d = g − σ(λ m + (1 − λ) g); the official
    code is what produced the paper's results.) m is an optimizer variable per model variable,
    saved with the model.

    Departures: a step with a non-finite gradient in either pass (a loss-scale overflow, which
    the scaler skips) leaves m and the started flag unchanged (with ``first_step``/
    ``second_step``, which may run in separate functions, only the clean pass decides). With
    a ``schedule``, m is updated on every step, the plain ones included (the clean gradient is
    computed on every step; the paper has no schedule). tf.distribute with several replicas
    is refused (one m for the model).

    Args:
        base_optimizer: The optimizer that makes the update.
        rho: ρ. Defaults to 0.05 (the official code's default).
        sigma: σ. Defaults to 1.0 (the official code's default, used in the paper).
        lmbda: λ in [0, 1). Defaults to 0.9 (the official code's default; the paper's CIFAR
            runs also use 0.6 and 0.95).
        **kwargs: The options of ``SAMVariant``.

    Raises:
        ValueError: ``sigma`` < 0, ``lmbda`` outside [0, 1).

    References:
        Li et al., Friendly Sharpness-Aware Minimization, https://arxiv.org/abs/2403.12350
    """

    _replica_safe = False
    _state_name = "the moving average m of the gradients"

    def __init__(self, base_optimizer, rho=RHO, sigma=1.0, lmbda=0.9, **kwargs):
        super().__init__(base_optimizer, rho=rho, **kwargs)
        _check_number("sigma", sigma, minimum=0)
        bad = isinstance(lmbda, bool) or not isinstance(lmbda, (int, float))
        if bad or not 0 <= lmbda < 1:
            raise _bad("lmbda", "a number in [0, 1)", lmbda)
        self.sigma = float(sigma)
        self.lmbda = float(lmbda)
        self._m = None

    def _build_state(self, variables):
        self._m = [self.add_variable_from_reference(v, name="fsam_m") for v in variables]
        self._started = self.add_variable(
            shape=(), dtype="float32", aggregation="only_first_replica", name="fsam_started"
        )

    def _direction(self, grads, tvars, finite):
        started = ops.copy(self._started.value) > 0.5  # read now, before the update
        out, staged = [], []
        for g, v in zip(grads, tvars):
            if g is None:
                out.append(None)
                continue
            m = self._m[self._get_variable_index(v)]
            old = ops.cast(ops.copy(m.value), g.dtype)  # m before this step's update
            out.append(ops.where(started, g - _as(self.sigma, g.dtype) * old, g))
            lam = _as(self.lmbda, g.dtype)
            staged.append((m, ops.cast(ops.where(started, lam * old + (1 - lam) * g, g), m.dtype)))
        self.__dict__["_staged"] = staged  # applied by _commit once every pass is known finite
        return out

    def _commit(self, ok):
        for m, new in self.__dict__.pop("_staged", ()):
            m.assign(ops.where(ok, new, m.value))
        self._started.assign(ops.where(ok, 1.0, self._started.value))

    def get_config(self):
        config = super().get_config()
        config.update({"sigma": self.sigma, "lmbda": self.lmbda})
        return config


@keras.saving.register_keras_serializable(package="sam")
class ESAM(SAMVariant):
    """Efficient SAM (ESAM): stochastic weight perturbation and sharpness-sensitive data selection.

    Update: ε = (ρ/β) · M ⊙ g/‖M ⊙ g‖ with M keeping each variable with probability β;
    w ← w − η ∇ (1/|B⁺|) Σ_{i ∈ B⁺} L(w + ε, xᵢ), B⁺ the ⌊γ n⌋ examples of the batch with the
    largest L(w + ε, xᵢ) − L(w, xᵢ).

    ``SAMVariant(swp_beta=β, sds_gamma=γ)`` with the paper's defaults; see ``SAMVariant`` for
    both rules, where they follow the official code (dydjw9/Efficient_SAM) and where they
    depart. Data selection needs each example's loss: ESAM with γ < 1 trains with ``fit``
    (``SAMModel``/``sam_train_step``); γ = 1 turns it off.

    Args:
        base_optimizer: The optimizer that makes the update.
        rho: ρ. Defaults to 0.05 (the official CIFAR-10/100 ResNet-18 runs).
        beta: β in (0, 1]. Defaults to 0.6 (the official ResNet-18 runs; 0.5 for the others).
        gamma: γ in (0, 1]. Defaults to 0.5 (the official runs).
        **kwargs: The other options of ``SAMVariant``.

    References:
        Du et al., Efficient Sharpness-aware Minimization for Improved Training of Neural
        Networks, https://arxiv.org/abs/2110.03141
    """

    def __init__(self, base_optimizer, rho=RHO, beta=0.6, gamma=0.5, **kwargs):
        beta = _check_fraction("beta", beta)
        gamma = _check_fraction("gamma", gamma)
        super().__init__(
            base_optimizer,
            rho=rho,
            swp_beta=None if beta == 1.0 else beta,
            sds_gamma=None if gamma == 1.0 else gamma,
            **kwargs,
        )
        self.beta, self.gamma = beta, gamma

    def get_config(self):
        config = super().get_config()
        del config["swp_beta"], config["sds_gamma"]
        config.update({"beta": self.beta, "gamma": self.gamma})
        return config
