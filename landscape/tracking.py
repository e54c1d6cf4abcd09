"""Sharpness during training: ``SharpnessTracker``, a Keras callback, and the stability threshold.

Cohen et al. (2021, arXiv 2103.00065) observed that under full-batch gradient descent with step η
the top Hessian eigenvalue λ_max rises during training ("progressive sharpening") until it
reaches the stability threshold 2/η of gradient descent on a quadratic, and then hovers there
while the loss keeps decreasing, non-monotonically ("edge of stability"). For adaptive methods
the quantity that equilibrates is the preconditioned sharpness λ₁(P⁻¹H) (Cohen et al. 2022,
arXiv 2207.14484). The tracker measures the sharpness on a fixed probe set every N steps or
epochs with a warm-started Rayleigh–Ritz solver certified by its own fresh products
(``landscape._subspace``; Lanczos from a single vector) and records it beside
the threshold of the optimizer that takes the steps (``stability_threshold``):

==================  =====================================  ============================
optimizer           threshold, on the sharpness of          source
==================  =====================================  ============================
SGD                 2/η, on λ_max(H)                        Cohen et al. 2021, §2
SGD, momentum β     (2 + 2β)/η, on λ_max(H)                 Cohen et al. 2021, App. B
SGD, Nesterov β     (2 + 2β)/((1 + 2β)η), on λ_max(H)       Cohen et al. 2021, App. B
Adam / AdamW        (2 + 2β₁)/((1 − β₁)η), on λ₁(P⁻¹H)      Cohen et al. 2022, §2
==================  =====================================  ============================

Each is the largest curvature at which the optimizer's linear recurrence on a quadratic
½λw² is stable (spectral radius ≤ 1), written for Keras's update rules: ``keras.optimizers.SGD``
with momentum is v ← βv − ηg, w ← w + v (heavy ball), with ``nesterov=True`` w ← w + βv − ηg;
``keras.optimizers.Adam`` is w ← w − η P⁻¹m with m ← β₁m + (1 − β₁)g and, reading its state,
P = (1 − β₁ᵗ) (√v + ε) / √(1 − β₂ᵗ) after t steps (Keras adds ε to √v, not to √v̂; the
paper's P_t is (1 − β₁ᵗ)(√v̂ + ε)). tests/test_tracking.py checks every rule against Keras's
own optimizer. Decoupled weight decay is not part of the thresholds. When training with SAM
(or any ``sam.SAM``), the base optimizer's step is the one whose stability counts; a
``LossScaleOptimizer`` is looked through. Other optimizers are tracked with a NaN threshold.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import keras
import numpy as np

from landscape import _checks, _subspace
from landscape._provenance import plain, provenance
from landscape._threads import one_blas_thread
from landscape.hessian import _eigen_sizes, _Hessian, _start_vector, hessian_trace
from landscape.objective import Objective
from sam import SAM
from sam._compat import adam_velocity

logger = logging.getLogger("landscape")

# The history's keys besides the eigenvalues (lambda_max, lambda_2, ...).
KEYS = (
    "step",
    "epoch",
    "probe_loss",
    "learning_rate",
    "threshold",
    "residual",
    "converged",
    "n_hvp",
    "seconds",
)
UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Stability:
    """The stability threshold of the optimizer that takes the steps.

    Attributes:
        threshold: The largest stable sharpness at the current learning rate, in loss units
            per squared weight unit (NaN when no rule is known for the optimizer).
        learning_rate: η, the base optimizer's current learning rate.
        rule: The formula, e.g. ``"(2 + 2β)/η"``.
        optimizer: The class name of the optimizer whose step counts (SAM's base optimizer).
        preconditioner: For Adam, the diagonal P of the update w ← w − η P⁻¹m as one float64
            array per trainable variable (the sharpness is then λ₁(P⁻¹H)); None otherwise.
    """

    threshold: float
    learning_rate: float
    rule: str
    optimizer: str
    preconditioner: list[np.ndarray] | None = None


def stepping_optimizer(optimizer):
    """The optimizer whose update is applied: SAM's base optimizer, inside a loss scaler."""
    seen = 0
    while seen < 10:  # a loss scaler around SAM around a base optimizer, at most
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        elif isinstance(optimizer, SAM):
            optimizer = optimizer.base_optimizer
        else:
            return optimizer
        seen += 1
    return optimizer


def _number(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def _over(numerator: float, eta: float) -> float:
    """numerator / η; inf for η = 0 (a schedule's last step: every curvature is stable)."""
    return numerator / eta if eta > 0 else math.inf


def stability_threshold(optimizer, variables=None) -> Stability:
    """The stability threshold of ``optimizer`` at its current learning rate (module table).

    Args:
        optimizer: A Keras optimizer, a ``sam.SAM`` (its base optimizer counts) or a
            ``LossScaleOptimizer``.
        variables: The trainable variables, needed for Adam's preconditioner (read from the
            optimizer's state, which must be built and have taken at least one step).

    Returns:
        A ``Stability``; its ``threshold`` is NaN for optimizers without a known rule (RMSprop,
        Adagrad, Nadam, Lion, AMSGrad …) and for Adam before its first step, and inf at a
        learning rate of 0 (the end of a schedule decaying to 0).
    """
    opt = stepping_optimizer(optimizer)
    eta = _number(opt.learning_rate)
    name = type(opt).__name__
    if isinstance(opt, keras.optimizers.SGD):
        beta = float(opt.momentum)
        if beta == 0:
            return Stability(_over(2.0, eta), eta, "2/η", name)
        if opt.nesterov:
            return Stability(
                _over((2 + 2 * beta) / (1 + 2 * beta), eta), eta, "(2 + 2β)/((1 + 2β)η)", name
            )
        return Stability(_over(2 + 2 * beta, eta), eta, "(2 + 2β)/η", name)
    if isinstance(opt, keras.optimizers.Adam) and not opt.amsgrad:
        beta_1, beta_2 = float(opt.beta_1), float(opt.beta_2)
        rule = "(2 + 2β₁)/((1 − β₁)η) on λ₁(P⁻¹H)"
        steps = int(_number(opt.iterations))
        if steps == 0 or variables is None:
            return Stability(math.nan, eta, rule, name)
        scale = (1 - beta_1**steps) / math.sqrt(1 - beta_2**steps)
        preconditioner = [
            scale
            * (
                np.sqrt(np.asarray(keras.ops.convert_to_numpy(adam_velocity(opt, v)), np.float64))
                + opt.epsilon
            )
            for v in variables
        ]
        threshold = _over((2 + 2 * beta_1) / (1 - beta_1), eta)
        return Stability(threshold, eta, rule, name, preconditioner)
    return Stability(math.nan, eta, "unknown", name)


class SharpnessTracker(keras.callbacks.Callback):
    """A Keras callback recording the top Hessian eigenvalues during training (edge of stability).

    Every ``every`` epochs (or optimizer steps: with ``steps_per_execution`` > 1, at the first
    batch end at or past each multiple), and once before the first step, it computes the ``k``
    largest eigenvalues of the Hessian of the model's compiled loss on a fixed probe set, in
    inference mode (``landscape.Objective``: BatchNorm's moving statistics, no dropout), with
    a Rayleigh–Ritz solver that keeps every product it computes (below); optionally
    Hutchinson's trace. Beside
    it, the stability threshold of the optimizer that takes the steps at the current learning
    rate (``stability_threshold``; SAM's base optimizer when training with SAM). For Adam the
    recorded sharpness is the preconditioned λ₁(P⁻¹H), with P read from the optimizer's state
    (Cohen et al. 2022), and the probe before the first step is skipped (P is undefined).

    It never changes the model's weights, the optimizer's state, BatchNorm statistics or any
    random state: the Objective evaluates the model statelessly, and the Lanczos start vectors
    come from a NumPy generator seeded with ``seed`` + the probe's index.

    Records (``tracker.history``, a dict of equally long lists, one entry per probe):
    ``step`` (optimizer steps taken), ``epoch`` (epochs completed, fractional for step probes),
    ``probe_loss`` (the loss on the probe set, inference mode, one extra forward pass),
    ``lambda_max`` and ``lambda_2`` … ``lambda_k`` (loss units per squared weight unit; λ₁(P⁻¹H)
    for Adam), ``threshold``, ``learning_rate``, ``residual`` (the largest certified relative
    residual ‖Hv − λv‖/|λ|, from the probe's own products), ``converged`` (every residual ≤
    ``tol``), ``n_hvp`` (products of the probe, ≥ 1, certificates included), ``seconds``
    (its wall time) and, with ``trace=True``, ``trace`` and
    ``trace_stderr``. The values are also written into ``fit``'s logs — the batch logs at a
    step probe and every epoch's logs (NaN in an epoch without a probe) as ``probe_loss``,
    ``lambda_max``, ``lambda_2`` …, ``threshold``, ``residual`` (and ``trace``) — so
    ``History``, ``CSVLogger`` and ``TensorBoard`` record them; list the tracker before a
    ``CSVLogger`` or ``TensorBoard`` in ``callbacks`` so that they see the same epoch's values.

    The solver and its rule: a probe keeps a subspace U and its products W = H U, all computed
    at the current weights by this probe. It starts from the previous probe's k eigenvectors
    (``warm_start``; the first probe, or ``warm_start=False``: a random vector) and multiplies
    them again: Rayleigh–Ritz on H restricted to U gives the Ritz pairs (θ, y = U c), and
    since H y = W c, each residual ‖H y − θ y‖ = ‖W c − θ U c‖ is computed explicitly from
    this probe's fresh products, never from an older probe's, and costs no product of its own
    (``landscape.hessian_eigenvalues`` spends one more per eigenvalue on its certificate). A
    probe stops as soon as every wanted residual is ≤ ``tol``·|θ| (``converged``), or at
    ``max_iter`` products (``converged`` False, a warning); otherwise U grows by the residual
    of the worst wanted pair, one product each, which from one start vector is Lanczos. A
    full basis keeps the best ``k + (basis_size − k) // 2`` Ritz vectors with their products
    (W c: no product). So a warm probe costs one product if the previous eigenvector is still
    one to ``tol``, and one more per Krylov step otherwise. ``lambda_max`` is the top Ritz
    value (a lower bound of the top eigenvalue of H on the probe set, within ``residual``·|θ|
    of an eigenvalue: the certificate of ``hessian_eigenvalues``). Memory: U and W,
    ``basis_size`` vectors each, in float32 for float32 products (``basis_dtype``).

    Cost: a probe costs ``n_hvp`` Hessian-vector products on the probe set (each about 2–3
    gradients of it), one forward pass (``probe_loss``) and O(``basis_size`` × n_params)
    host arithmetic per product; nothing is traced again after the first probe. ``seconds``
    / ``train_seconds`` gives ``overhead``. On ``benchmarks/tracking.py``'s CNN probed every
    epoch a warm probe took 3–5 products (3.75 and 4.75 on average after the first, two runs;
    4.5 from a random start), the first one at initialization 16–27 (its top eigenvalues are
    close). Choose the probe set large enough that λ_max on it is the full-batch one you care
    about (a few hundred to a few thousand examples) and the interval so that the overhead
    stays acceptable; ``tol`` and ``max_iter`` bound each probe.

    Args:
        probe_data: The probe set: ``(x, y)``, ``(x, y, sample_weight)`` or a finite
            ``tf.data.Dataset`` (as ``landscape.Objective`` takes it); fixed for the run.
        every: Probe every this many epochs (or steps). Defaults to 1.
        unit: ``"epoch"`` or ``"step"``. Defaults to "epoch".
        k: Number of top eigenvalues. Defaults to 1.
        loss: None for the model's compiled loss, or a loss as ``Objective`` takes it.
        batch_size: Batch size of the probe set's evaluation. Defaults to 256.
        tol: Relative residual certifying the eigenvalues. Defaults to 1e-3.
        max_iter: Cap on the products of one probe. Defaults to 100.
        basis_size: Vectors of U (and of W) before a restart, at least k + 2. Defaults to
            None: max(2k + 10, 20), at most n_params (``hessian.default_basis_size``).
        warm_start: Start each probe from the previous probe's eigenvectors (multiplied
            again at the current weights). Defaults to True.
        trace: Also estimate tr(H) (Hutchinson) at every probe. Defaults to False.
        trace_samples: Most Hutchinson probes of the trace. Defaults to 100.
        trace_tol: Relative standard error that stops the trace. Defaults to 0.05.
        at_start: Probe once before the first step. Defaults to True.
        precision: The analysis precision (see ``Objective``). Defaults to "auto".
        seed: Seed of the Lanczos start vectors (probe i uses seed + i). Defaults to 0.

    Attributes:
        history: The records above.
        seconds: Wall time spent in probes.
        train_seconds: Wall time of the training runs (``fit`` calls), probes included.
        overhead: ``seconds / (train_seconds − seconds)``: the probes' time over training's.
        quantity: ``"lambda_max(H)"`` or ``"lambda_1(P^-1 H)"``: what ``lambda_max`` measures.
        rule: The threshold's formula (``Stability.rule``).

    Raises:
        ValueError: a bad argument, named (at construction); at the start of training, a
            probe set or loss that ``Objective`` refuses.

    Example:
        >>> tracker = landscape.SharpnessTracker((x[:1000], y[:1000]), every=1)
        >>> model.fit(x, y, epochs=20, callbacks=[tracker])
        >>> tracker.history["lambda_max"], tracker.history["threshold"], tracker.overhead
        >>> landscape.plot_sharpness(tracker)

    References:
        Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on Neural Networks
        Typically Occurs at the Edge of Stability", https://arxiv.org/abs/2103.00065.
        Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability",
        https://arxiv.org/abs/2207.14484.
    """

    def __init__(
        self,
        probe_data,
        *,
        every: int = 1,
        unit: str = "epoch",
        k: int = 1,
        loss=None,
        batch_size: int = 256,
        tol: float = 1e-3,
        max_iter: int = 100,
        basis_size: int | None = None,
        warm_start: bool = True,
        trace: bool = False,
        trace_samples: int = 100,
        trace_tol: float = 0.05,
        at_start: bool = True,
        precision: str = "auto",
        seed: int = 0,
    ):
        super().__init__()
        self.every = _checks.integer("every", every, 1)
        if unit not in UNITS:
            raise ValueError(f"Argument `unit` must be one of {UNITS}. Received: unit={unit!r}.")
        self.unit = unit
        self.k = _checks.integer("k", k, 1)
        self.batch_size = _checks.integer("batch_size", batch_size, 1)
        self.tol = _checks.fraction("tol", tol)
        self.max_iter = _checks.integer("max_iter", max_iter, 1)
        self.basis_size = basis_size
        self.warm_start = _checks.boolean("warm_start", warm_start)
        self.trace = _checks.boolean("trace", trace)
        self.trace_samples = _checks.integer("trace_samples", trace_samples, 2)
        self.trace_tol = _checks.fraction("trace_tol", trace_tol)
        self.at_start = _checks.boolean("at_start", at_start)
        self.seed = _checks.integer("seed", seed, 0)
        self.probe_data, self.loss, self.precision = probe_data, loss, precision
        names = ["lambda_max"] + [f"lambda_{i}" for i in range(2, self.k + 1)]
        extra = ["trace", "trace_stderr"] if self.trace else []
        self.history: dict[str, list] = {key: [] for key in (*KEYS[:3], *names, *KEYS[3:], *extra)}
        self._logged = ("probe_loss", *names, "threshold", "residual", *extra[:1])
        self.seconds = 0.0
        self.train_seconds = 0.0
        self.quantity = "lambda_max(H)"
        self.rule = ""
        self._objective: Objective | None = None
        self._previous: _subspace.Pairs | None = None
        self._step = 0
        self._epoch = 0
        self._epoch_record: dict | None = None
        self._warned = False
        if unit == "epoch":
            # No batch hook: Keras then dispatches the batch-end callbacks of fit asynchronously
            # instead of converting every step's logs to host floats for this callback.
            self.on_train_batch_end = super().on_train_batch_end

    # --------------------------------------------------------------------------- results
    @property
    def overhead(self) -> float:
        """Time in probes over training time without them (NaN before any training)."""
        rest = self.train_seconds - self.seconds
        return self.seconds / rest if rest > 0 else math.nan

    def as_dict(self) -> dict:
        """The history and settings as JSON-ready builtins (``json.dump(tracker.as_dict())``),
        with the provenance block (``landscape._provenance``: versions, settings, seed, the
        fingerprints of the weights now and of the probe set, whether every probe converged)."""
        settings = {
            "every": self.every,
            "unit": self.unit,
            "k": self.k,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "warm_start": self.warm_start,
            "trace": self.trace,
            "seed": self.seed,
        }
        history = plain(self.history)  # NaN and infinities as None
        converged = {"every_probe": all(history["converged"])} if history["step"] else None
        block = provenance(objective=self._objective, settings=settings, seeds=self.seed,
                           converged=converged)  # fmt: skip
        return {
            "provenance": block,
            "history": history,
            "quantity": self.quantity,
            "rule": self.rule,
            "settings": settings,
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "overhead": plain(self.overhead),
        }

    # ------------------------------------------------------------------------- callbacks
    def _ready(self) -> bool:
        """Whether the probe set's Objective exists, making it once the model is built.

        A subclassed model that was never called is built by ``fit``'s first step; until then
        there are no weights to measure (the probe before the first step is then skipped).
        """
        if self._objective is not None and self._objective.model is self.model:
            return True
        if not self.model.built:
            return False
        start = time.perf_counter()
        self._objective = Objective(
            self.model,
            self.probe_data,
            self.loss,
            batch_size=self.batch_size,
            metrics=(),
            precision=self.precision,
        )
        self._previous = None
        self.seconds += time.perf_counter() - start  # checking the model against its loss
        return True

    def on_train_begin(self, logs=None):
        self._train_start = time.perf_counter()
        self._step = self._epoch_start = int(_number(self.model.optimizer.iterations))
        self._epoch = 0
        if not self._ready():
            logger.info(
                "SharpnessTracker: the model is built by its first training step; the first "
                "probe comes after it."
            )
            return
        if self.at_start and (not self.history["step"] or self.history["step"][-1] != self._step):
            self._probe(epoch=0.0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start = int(_number(self.model.optimizer.iterations))
        self._epoch_record = None

    def on_train_batch_end(self, batch, logs=None):
        # Step probes only: with unit="epoch" the instance has Keras's default (no-op) hook, as
        # ``Callback.model`` syncs Keras's JAX training state into the variables at each
        # access, and the epoch's step count is read at its end, where fit has synced anyway.
        # The optimizer's step count, not a count of calls: with ``steps_per_execution`` > 1,
        # Keras calls this hook once per execution of several steps.
        previous, self._step = self._step, int(_number(self.model.optimizer.iterations))
        due = self._step // self.every > previous // self.every
        if self.unit == "step" and due and self._ready():
            # Steps of this epoch so far over its steps (not Keras's batch index, which a last,
            # shorter execution of ``steps_per_execution`` steps overshoots).
            steps = (self.params or {}).get("steps")
            done = min((self._step - self._epoch_start) / steps, 1.0) if steps else 0.0
            record = self._probe(epoch=self._epoch + done)
            if logs is not None and record is not None:
                logs.update(record)

    def on_epoch_end(self, epoch, logs=None):
        self._step = int(_number(self.model.optimizer.iterations))  # synced here on every backend
        if self.unit == "epoch" and (epoch + 1) % self.every == 0 and self._ready():
            self._probe(epoch=float(epoch + 1))
        if logs is not None:
            record = self._epoch_record or {}
            logs.update({key: record.get(key, math.nan) for key in self._logged})

    def on_train_end(self, logs=None):
        self.train_seconds += time.perf_counter() - self._train_start
        logger.info(
            "SharpnessTracker: %d probes, %.1f s in probes, %.1f s of training: overhead %.1f %%",
            len(self.history["step"]), self.seconds, self.train_seconds, 100 * self.overhead,
        )  # fmt: skip

    # ---------------------------------------------------------------------------- probes
    def _eigenpairs(self, index: int, preconditioner) -> _subspace.Pairs:
        """The top-k pairs at the current weights, certified by this probe's own products."""
        op = _Hessian(self._objective, "train", "auto", preconditioner)
        k, max_iter, basis = _eigen_sizes(
            op, self.k, "lanczos", "largest", self.max_iter, self.basis_size
        )
        _subspace.check_memory(op.n, k, basis, self._objective.precision)
        rng = np.random.default_rng(self.seed + index)
        if self.warm_start and self._previous is not None and len(self._previous.values) == k:
            start = list(self._previous.vectors)
            start[0] = _start_vector(op, start[0], rng)  # + WARM_START_NOISE, as Lanczos's
        else:
            start = [_start_vector(op, None, rng)]
        return _subspace.eigenpairs(
            op, k, which="largest", tol=self.tol, max_iter=max_iter, basis_size=basis,
            start=start, rng=rng,
        )  # fmt: skip

    @one_blas_thread
    def _probe(self, *, epoch: float) -> dict | None:
        """Measure, record and return the logged values (None when Adam has taken no step)."""
        start = time.perf_counter()
        obj = self._objective
        stability = stability_threshold(self.model.optimizer, obj.trainable_variables)
        self.rule = stability.rule
        adam = stability.rule.endswith("P⁻¹H)")
        if adam and stability.preconditioner is None:
            logger.debug("SharpnessTracker: Adam has taken no step; no preconditioned sharpness")
            return None
        preconditioner = None
        if stability.preconditioner is not None:
            preconditioner = np.concatenate([p.ravel() for p in stability.preconditioner])
            self.quantity = "lambda_1(P^-1 H)"
        index = len(self.history["step"])
        eig = self._eigenpairs(index, preconditioner)
        self._previous = eig
        record = {"probe_loss": obj.evaluate()["loss"], "lambda_max": float(eig.values[0])}
        record.update({f"lambda_{i + 1}": float(v) for i, v in enumerate(eig.values[1:], 1)})
        record.update(threshold=stability.threshold, residual=float(np.max(eig.residuals)))
        n_hvp = eig.n_hvp
        if self.trace:
            tr = hessian_trace(
                obj, samples=self.trace_samples, tol=self.trace_tol, seed=self.seed + index
            )
            record.update(trace=tr.estimate, trace_stderr=tr.stderr)
            n_hvp += tr.n_hvp
        seconds = time.perf_counter() - start
        self.seconds += seconds
        row = {
            "step": self._step,
            "epoch": epoch,
            "learning_rate": stability.learning_rate,
            "converged": bool(eig.converged),
            "n_hvp": n_hvp,
            "seconds": seconds,
            **record,
        }
        for key, values in self.history.items():
            values.append(row[key])
        if not eig.converged and not self._warned:
            self._warned = True
            logger.warning(
                "SharpnessTracker: the probe at step %d is not certified (largest residual "
                "%.2g > tol %.2g after %d products); raise max_iter (now %d) or tol.",
                self._step, row["residual"], self.tol, eig.n_hvp, self.max_iter,
            )  # fmt: skip
        logged = {key: record[key] for key in self._logged}
        self._epoch_record = logged
        return logged
