"""Properties every SAM-family member keeps, written once and parametrized over the family.

A new member is added to ``MEMBERS`` and inherits every property. References: the base optimizer
itself (ρ = 0), the state before the step (overflow), plain Keras ``fit`` (which variables train),
the run without a save (reload), and each member's rule written here in float64 NumPy on a model
with attention, normalization layers, an embedding and rank-2 biases (``sam_reference.make_zoo``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sam_reference import (
    ZOO_NORMALIZATION,
    ZOO_OFFSETS,
    ZooGradient,
    asam_epsilon,
    make_second_pass_overflow,
    make_zoo,
    zoo_data,
)

from sam import ESAM, GSAM, SAM, FriendlySAM, LookSAM, SAMModel, SAMSchedule, SAMVariant

LR = 0.1

# name -> (rho, perturbed selection on the zoo) -> optimizer around the base
MEMBERS = {
    "SAM": lambda b, rho, sel: SAM(b, rho=rho),
    "ASAM": lambda b, rho, sel: SAM(b, rho=rho, adaptive=True),
    "GSAM": lambda b, rho, sel: GSAM(b, rho=rho, alpha=0.3),
    "LookSAM": lambda b, rho, sel: LookSAM(b, rho=rho, k=2, alpha=0.7),
    "FriendlySAM": lambda b, rho, sel: FriendlySAM(b, rho=rho),
    "ESAM": lambda b, rho, sel: ESAM(b, rho=rho, beta=0.6, gamma=1.0),
    "SAM-ON": lambda b, rho, sel: SAMVariant(b, rho=rho, perturbed=sel),
    "schedule": lambda b, rho, sel: SAMVariant(b, rho=rho, schedule=SAMSchedule.every_k(2)),
}
NAMES = list(MEMBERS)
# Members whose update is not the gradient itself but a combination of dense vectors: their
# Embedding gradient is summed per row first, where Keras's sparse path scales each slice before
# summing (round-off apart); at ρ = 0 they are the base optimizer given that dense gradient.
DENSE_RULES = {"GSAM", "LookSAM"}


class DenseSGD(keras.optimizers.SGD):
    """SGD given every gradient dense (an Embedding's IndexedSlices summed per row)."""

    def apply(self, grads, trainable_variables=None):
        return super().apply([tf.convert_to_tensor(g) for g in grads], trainable_variables)


def make(name, base, rho=0.05, sel="normalization"):
    return MEMBERS[name](base, rho, sel)


def compile_zoo(model, optimizer, run_eagerly=True):
    """Eager by default: tracing a SAM step costs a second per member, the step itself 10 ms;
    ρ = 0 runs in both modes (the traced step is the same algorithm, see below)."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
        run_eagerly=run_eagerly,
    )
    return model


def zoo_model(cls=SAMModel):
    return make_zoo(model_cls=cls)


def state(optimizer):
    return [v.numpy().copy() for v in optimizer.variables]


@pytest.fixture
def without_grappler():
    """TensorFlow's graph optimizer off for the test: it rewrites each traced graph as a whole, so
    two different graphs computing the same gradient may round differently (plain fit's own graph
    differs from plain fit run eagerly by up to 1 ulp in every variable of the zoo); without it,
    graph and eager results are bit-identical and the comparison is the algorithm's alone."""
    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": before.get("disable_meta_optimizer", False)}
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "graph"])
def test_rho_zero_is_the_base_optimizer_bit_for_bit(name, eager, without_grappler):
    x, y, sw = zoo_data()
    model = zoo_model()  # first: it sets floatx, which types the optimizer's learning rate
    model = compile_zoo(model, make(name, keras.optimizers.SGD(LR, momentum=0.9), 0.0), eager)
    reference = DenseSGD if name in DENSE_RULES else keras.optimizers.SGD
    plain = compile_zoo(zoo_model(keras.Model), reference(LR, momentum=0.9), eager)
    for _ in range(2):  # the second step uses the momentum the first made
        model.train_on_batch(x, y, sample_weight=sw)
        plain.train_on_batch(x, y, sample_weight=sw)
    base = model.optimizer.base_optimizer
    pairs = list(zip(model.variables, plain.variables))
    pairs += list(zip(base.variables, plain.optimizer.variables))
    for a, b in pairs:
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("overflowing", ["first", "second"])
def test_an_overflow_in_any_pass_changes_nothing(name, overflowing):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model, x, y = make_second_pass_overflow(SAMModel)
    inner = make(name, keras.optimizers.SGD(LR, momentum=0.9), 1e4, "f16")
    scale = 2.0**100 if overflowing == "first" else 1.0  # 2¹⁰⁰·g overflows the clean pass
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(inner, initial_scale=scale),
                  loss="mae")  # fmt: skip
    model.optimizer.build(model.trainable_variables)
    weights, before = model.get_weights(), state(inner)
    model.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    for v, b in zip(inner.variables, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)


@pytest.mark.parametrize("name", NAMES)
def test_a_zero_gradient_keeps_everything_finite(name):
    model = make_zoo()
    opt = make(name, keras.optimizers.Adam(LR), 0.5)
    opt.assign_roles(model)
    tvars = model.trainable_variables

    def zeros():
        return [tf.zeros_like(v) for v in tvars]

    for _ in range(2):
        if isinstance(opt, SAMVariant):
            opt.step(zeros, tvars)
        else:
            opt.first_step(zeros(), tvars)
            opt.second_step(zeros(), tvars)
    for v in [*tvars, *opt.variables]:
        assert np.all(np.isfinite(v.numpy())), v.path


@pytest.mark.parametrize("name", NAMES)
def test_every_variable_plain_fit_trains_is_trained(name):
    x, y, sw = zoo_data()
    model = compile_zoo(zoo_model(), make(name, keras.optimizers.SGD(LR), 0.5))
    plain = compile_zoo(zoo_model(keras.Model), keras.optimizers.SGD(LR))
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(x, y, sample_weight=sw, epochs=1, verbose=0)
    plain.fit(x, y, sample_weight=sw, epochs=1, verbose=0)
    for v, p, b in zip(model.trainable_variables, plain.trainable_variables, before):
        if not np.array_equal(p.numpy(), b):
            assert not np.array_equal(v.numpy(), b), v.path


@pytest.mark.parametrize("name", NAMES)
def test_save_and_reload_mid_training_continues_bit_identically(name, tmp_path):
    x, y, sw = zoo_data()
    model = compile_zoo(zoo_model(), make(name, keras.optimizers.SGD(LR, momentum=0.9), 0.3))
    for _ in range(2):
        model.train_on_batch(x, y, sample_weight=sw)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for _ in range(2):
        model.train_on_batch(x, y, sample_weight=sw)
        loaded.train_on_batch(x, y, sample_weight=sw)
    for a, b in zip(model.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


# -- each member's first step by its rule, in float64 ---------------------------------------------


def _unit(d):
    n = np.sqrt(sum(np.sum(x * x) for x in d))
    return [x / n for x in d]


def reference_update(name, paths, w, g_of, rho):
    """The update u (w ← w − η u) of each member's first step, from its paper's rule."""
    g = g_of(w)

    def at(e):
        return g_of([wi + ei for wi, ei in zip(w, e)])

    if name == "ASAM":
        return at(asam_epsilon(paths, w, g, rho))
    if name == "ESAM":  # ε = (ρ/β) M⊙g/‖M⊙g‖, M ~ stateless_uniform([n], [seed+1, t]) < β
        kept = tf.random.stateless_uniform([len(w)], seed=[1, 0], dtype=tf.float64).numpy() < 0.6
        d = [gi if k else np.zeros_like(gi) for gi, k in zip(g, kept)]
        return at([rho / 0.6 * x for x in _unit(d)])
    if name == "SAM-ON":
        d = [gi if p in ZOO_NORMALIZATION else np.zeros_like(gi) for p, gi in zip(paths, g)]
        return at([rho * x for x in _unit(d)])
    ga = at([rho * x for x in _unit(g)])  # SAM, LookSAM's and a schedule's step 0, F-SAM's first
    if name == "GSAM":
        c = sum(np.sum(a * b) for a, b in zip(g, ga)) / sum(np.sum(a * a) for a in ga)
        return [a - 0.3 * (b - c * a) for a, b in zip(ga, g)]
    return ga


@pytest.mark.parametrize("name", NAMES)
def test_first_step_on_the_zoo_is_the_members_rule(name):
    x, y, sw = zoo_data()
    model = zoo_model()
    g_of = ZooGradient(model)
    paths = [v.path for v in model.trainable_variables]
    w0 = [v.numpy() for v in model.trainable_variables]
    compile_zoo(model, make(name, keras.optimizers.SGD(LR), 0.5)).train_on_batch(
        x, y, sample_weight=sw
    )
    u = reference_update(name, paths, w0, lambda w: g_of(w, x, y, sw), 0.5)
    assert set(paths) >= ZOO_OFFSETS
    for v, w, ui in zip(model.trainable_variables, w0, u):
        np.testing.assert_allclose(v.numpy(), w - LR * ui, rtol=1e-9, atol=1e-12, err_msg=v.path)
