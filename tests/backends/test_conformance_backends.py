"""The conformance harness's fixed-seed profile on the running backend (JAX, PyTorch; TF too).

Each case is drawn by tests/model_grammar.py in the "ci" profile, where only what the backend
has is drawn (no string inputs or lookup layers off TensorFlow, no ``tf.SparseTensor``, tf.data
where TensorFlow is installed), and checked by tests/conformance.py against references outside
the toolkit's code path: ``model.evaluate``, assignment + ``model.evaluate``, NumPy filter
norms, bit-identical weights, and off TensorFlow the Hessian-vector product against the
backend's own autodiff of a loss written with ``keras.StatelessScope`` and
``model.compute_loss`` (float64 gradients, the TensorFlow reference, are refused here). The SAM
step (g) runs on TensorFlow only (tests/test_conformance.py). A case whose every failure is a
fault already known (conformance.KNOWN_FAULTS) xfails with that reason.
"""

import conformance
import keras
import model_grammar
import pytest

# JAX compiles each case's functions (about 10 s a case on two shared cores), PyTorch runs
# eagerly (about 1 s); on TensorFlow tests/test_conformance.py runs its own 20 seeds
SEEDS = range(6) if model_grammar.BACKEND == "jax" else range(20)


@pytest.mark.skipif(model_grammar.ON_TF, reason="tests/test_conformance.py runs on TensorFlow")
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_generated_model_conforms_on_this_backend(seed):
    case = model_grammar.draw(seed, "ci")
    result = conformance.run_case(case, sam_step=model_grammar.ON_TF)
    keras.backend.clear_session(free_memory=False)
    if result.invalid:
        pytest.skip(f"Keras itself cannot run {case.describe()}: {result.invalid}")
    unknown = [f for f in result.failures if conformance.known_fault(case, f) is None]
    assert not unknown, case.describe() + "\n" + "\n".join(f.line() for f in unknown)
    known = sorted({conformance.known_fault(case, f) for f in result.failures})
    if known:
        reasons = "; ".join(conformance.KNOWN_FAULTS[k][0] for k in known)
        pytest.xfail(f"{case.describe()}: {reasons}")
    assert {"a", "e", "f"} <= set(result.ran) or result.refusal, case.describe()


def test_the_draw_leaves_out_what_this_backend_lacks():
    cases = [model_grammar.draw(s, "long") for s in range(300)]
    kinds = {c.input_kind for c in cases}
    forms = {c.data_form for c in cases}
    if model_grammar.ON_TF:
        assert {"str", "int"} <= kinds and "sparse" in forms
    else:
        assert not {"str", "int"} & kinds and "sparse" not in forms
        assert ("dataset" in forms) == model_grammar.HAS_TF
