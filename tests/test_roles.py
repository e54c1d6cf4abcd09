"""Variable roles (sam._roles): ASAM's T and SAM-ON's selection by layer semantics, not rank.

References: the ASAM reference's rule written by hand for the test model (``ZOO_OFFSETS``: every
bias and normalization β at T = 1, everything else |w| + η), ε computed in NumPy, gradients from
a clone of the model in float64 (``sam_reference.ZooGradient``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sam_reference import (
    ZOO_NORMALIZATION,
    ZOO_OFFSETS,
    ZooGradient,
    asam_epsilon,
    make_zoo,
    zoo_data,
)

from sam import SAM, SAMModel, SAMVariant
from sam._roles import model_roles

RHO, LR = 0.5, 0.1


def compile_zoo(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
    )
    return model


def test_the_zoo_has_rank_2_biases_and_vector_gammas():
    model = make_zoo()
    shapes = {v.path: v.shape for v in model.trainable_variables}
    assert shapes["mha/query/bias"] == (2, 3) and shapes["ln/gamma"] == (4,)
    assert set(shapes) > ZOO_OFFSETS


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_asam_epsilon_of_each_tensor_is_the_reference_rule(loop):
    model = make_zoo()
    x, y, _ = zoo_data()
    tvars = model.trainable_variables
    paths = [v.path for v in tvars]
    w0 = [v.numpy() for v in tvars]
    g = ZooGradient(model)(w0, x, y)
    opt = SAM(keras.optimizers.SGD(LR), rho=RHO, adaptive=True)
    if loop == "fit":  # the roles fit gives the optimizer; a custom loop falls back to names
        compile_zoo(SAMModel(model.inputs, model.outputs), opt).fit(x, y, epochs=0)
        opt.assign_roles(model)
    e = opt.perturbation([np.asarray(gi) for gi in g], w0, tvars)
    expected = asam_epsilon(paths, w0, g, RHO)
    for p, ei, xi in zip(paths, e, expected):
        np.testing.assert_allclose(ei.numpy(), xi, rtol=1e-10, atol=1e-15, err_msg=p)


def test_asam_fit_step_equals_the_reference_step():
    model = make_zoo()
    reference = ZooGradient(model)
    x, y, sw = zoo_data()
    w0 = [v.numpy() for v in model.trainable_variables]
    paths = [v.path for v in model.trainable_variables]
    sam_model = compile_zoo(SAMModel(model.inputs, model.outputs),
                            SAM(keras.optimizers.SGD(LR), rho=RHO, adaptive=True))  # fmt: skip
    sam_model.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    e = asam_epsilon(paths, w0, reference(w0, x, y, sw), RHO)
    g_adv = reference([w + ei for w, ei in zip(w0, e)], x, y, sw)
    for v, w, ga in zip(sam_model.trainable_variables, w0, g_adv):
        np.testing.assert_allclose(v.numpy(), w - LR * ga, rtol=1e-9, atol=1e-12, err_msg=v.path)


def test_roles_of_the_zoo_come_from_the_layers():
    model = make_zoo()
    roles = {v.path: model_roles(model)[id(v)] for v in model.variables}
    assert roles["mha/query/bias"] == "bias" and roles["mha/query/kernel"] == "kernel"
    assert roles["ln/gamma"] == "norm_scale" and roles["bn/beta"] == "norm_offset"
    assert roles["bn/moving_mean"] == "norm_statistics" and roles["emb/embeddings"] == "embedding"


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_sam_on_normalization_selects_gamma_and_beta_by_role(loop):
    model = make_zoo()
    x, y, _ = zoo_data()
    opt = SAMVariant(keras.optimizers.SGD(LR), perturbed="normalization")
    if loop == "fit":
        compile_zoo(SAMModel(model.inputs, model.outputs), opt).fit(x, y, epochs=1, verbose=0)
    else:
        opt.build(model.trainable_variables)
    assert {v.path for v in opt.perturbed_variables()} == ZOO_NORMALIZATION
