"""The fixed-seed profile of the conformance harness: a few dozen generated models, each checked.

Each case is one test id (its seed), drawn by tests/model_grammar.py in the "ci" profile and
checked by tests/conformance.py against references outside the toolkit's code path
(model.evaluate, assignment, finite differences of float64 gradients, NumPy). A case whose every
failure is a fault already being fixed (conformance.KNOWN_FAULTS) xfails with that reason; any
other failure fails the test and prints the case in one line. The long profile is
benchmarks/conformance.py.
"""

import conformance
import keras
import model_grammar
import pytest

CI_SEEDS = range(20)  # about 3 s of one core each


@pytest.mark.parametrize("seed", CI_SEEDS, ids=lambda s: f"seed{s}")
def test_generated_model_conforms(seed):
    case = model_grammar.draw(seed, "ci")
    result = conformance.run_case(case)
    keras.backend.clear_session(free_memory=False)
    if result.invalid:
        pytest.skip(f"Keras itself cannot run {case.describe()}: {result.invalid}")
    unknown = [f for f in result.failures if conformance.known_fault(case, f) is None]
    assert not unknown, case.describe() + "\n" + "\n".join(f.line() for f in unknown)
    known = sorted({conformance.known_fault(case, f) for f in result.failures})
    if known:
        reasons = "; ".join(conformance.KNOWN_FAULTS[k][0] for k in known)
        pytest.xfail(f"{case.describe()}: {reasons}")
    assert result.ran, case.describe()


def test_cases_are_reproducible_from_their_seed():
    assert model_grammar.draw(7, "ci") == model_grammar.draw(7, "ci")
    assert model_grammar.draw(7, "ci").describe() != model_grammar.draw(8, "ci").describe()
