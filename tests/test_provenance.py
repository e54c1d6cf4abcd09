"""The provenance block (landscape._provenance): its keys, where its values come from, and that
a library call records no command while a CLI command's options do not leak past it."""

from __future__ import annotations

import json
import math

import h5py
import keras
import numpy as np
import provenance_check
import pytest

import landscape
from landscape import _provenance
from landscape.objective import Objective


@pytest.fixture(scope="module")
def objective():
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(4, activation="tanh"), keras.layers.BatchNormalization()]
    model = keras.Sequential([keras.Input((3,)), *layers, keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16))
    return Objective(model, data, batch_size=8)


def test_a_library_block_has_the_fingerprints_and_no_command(objective):
    block = _provenance.provenance(objective=objective, settings={"k": 3, "grid": (1, 2)},
                                   seeds=np.int64(4), converged={"x": np.bool_(True)})  # fmt: skip
    provenance_check.check(block, model=objective.model)
    assert block["settings"] == {"k": 3, "grid": [1, 2]} and block["seeds"] == 4
    assert block["converged"] == {"x": True} and block["precision"] == objective.precision
    assert block["data_fingerprint"] == objective.data_fingerprint()
    assert json.loads(json.dumps(block)) == block  # plain JSON, nothing to convert
    # the BatchNorm moving statistics are weights too: the fingerprint sees them change
    before = _provenance.model_weights_fingerprint(objective.model)
    variance = objective.model.layers[1].moving_variance
    variance.assign(variance + 1.0)
    assert _provenance.model_weights_fingerprint(objective.model) != before
    assert _provenance.model_weights_fingerprint(objective.model) == objective.weights_fingerprint()
    variance.assign(variance - 1.0)


def test_keys_without_a_value_are_left_out():
    block = _provenance.provenance()
    assert set(block) == {"provenance_version", "created", "versions", "backend", "platform"}


def test_plain_makes_json_of_numpy_paths_and_non_finite_floats(tmp_path):
    value = {1: (np.float32(0.5), np.arange(2)), "p": tmp_path, "inf": math.inf, "o": object}
    plain = _provenance.plain(value)
    assert plain == {"1": [0.5, [0, 1]], "p": str(tmp_path), "inf": None, "o": str(object)}


def test_an_invocation_is_recorded_inside_its_block_only():
    with _provenance.invocation("landscape hessian", {"k": 2, "out": None}):
        inner = _provenance.provenance()
    provenance_check.check(inner, command="hessian", options={"k": 2, "out": None}, keys=())
    provenance_check.check(_provenance.provenance(), keys=())


def test_the_library_surface_file_and_tracker_carry_it(objective, tmp_path):
    d = landscape.random_direction(objective.model, seed=3)
    path = tmp_path / "s.h5"
    surface = landscape.compute_surface(objective, [d], x="-1:1:3", path=path, verbose=0)
    with h5py.File(path) as f:
        block = provenance_check.check(f.attrs["provenance"], model=objective.model)
    assert block["settings"]["x"] == {"start": -1.0, "stop": 1.0, "num": 3}
    assert block["seeds"] == [3] and surface.metadata["provenance"] == block
    assert landscape.Surface.load(path).metadata["provenance"] == block
    tracker = landscape.SharpnessTracker((np.zeros((4, 3), "float32"), np.zeros(4)), every=1)
    saved = tracker.as_dict()  # before any probe: no fingerprints yet, still the versions
    provenance_check.check(saved["provenance"])
    assert saved["provenance"]["settings"] == saved["settings"]
