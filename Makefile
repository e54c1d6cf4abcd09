# `make test` and `make demo` each set up .venv on a fresh machine (only Python needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
# PyTorch for the CPU. A plain `torch` (the test extra's torch>=2.4) resolves on Linux to a CUDA
# build of several GB; pip's find-links on the project's machines (Python 3.11) hold
# torch 2.13.0+cpu, which `torch==2.13.0` takes (a +cpu build sorts above the bare release).
# Elsewhere pass TORCH_PIN= to let pip choose, or a pin of a torch CPU build that your pip reaches.
TORCH_PIN ?= torch==2.13.0
# The backend-neutral tests, run once per Keras backend, each backend in its own process.
BACKEND_TESTS := -m "not slow" tests/backends

.PHONY: test test-fast test-slow demo docs lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]' $(TORCH_PIN)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

# The whole suite but the tests marked slow (long end-to-end runs: ResNet-50 and MobileNetV2,
# clusters, kill -9, the three backends compared at once) on TensorFlow, then tests/backends on JAX and on PyTorch (LANDSCAPE_TEST_BACKEND,
# tests/conftest.py); `make test-slow` runs the slow ones. Two pytest-xdist workers, each test
# file in one worker (its module fixtures built once): the TensorFlow leg took 8 min 53 s against
# 15 min 28 s in one process on the same 2 cores (docs/guide/testing.md).
PARALLEL := -n 2 --dist loadfile
test: lint
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"
	LANDSCAPE_TEST_BACKEND=jax $(BIN)/python -m pytest -q $(PARALLEL) $(BACKEND_TESTS)
	LANDSCAPE_TEST_BACKEND=torch $(BIN)/python -m pytest -q $(PARALLEL) $(BACKEND_TESTS)

# A quick check while editing (docs/guide/testing.md), on TensorFlow, stopping at the first
# failure, no lint: the SAM optimizer, the Objective, Hessian and sharpness analyses, surfaces and
# their file, plots, summaries, the CLI's main commands, provenance, docs links and the
# structure limits. 1 min 41 s on 2 quiet cores (the former target, tests/backends +
# test_objective, ran past 3 min on busy ones). Run `make test` before you push.
FAST_TESTS := tests/test_optimizer.py tests/test_objective.py tests/test_hessian.py \
	tests/test_sharpness.py tests/test_surface.py tests/test_io.py tests/test_plot.py \
	tests/test_summary.py tests/test_validity.py tests/test_cli.py tests/test_draws.py \
	tests/test_provenance.py tests/test_docs.py tests/test_structure.py
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x -m "not slow" $(FAST_TESTS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow
	LANDSCAPE_TEST_BACKEND=jax $(BIN)/python -m pytest -q -m slow tests/backends
	LANDSCAPE_TEST_BACKEND=torch $(BIN)/python -m pytest -q -m slow tests/backends

# The main job: SGD and SAM ResNets on the embedded MNIST subset with 40 % wrong labels, 3 seeds;
# landscapes, sharpness, statistics and figures into out/figures (rerunning resumes; a directory
# from another configuration is refused). figures/ holds the same experiment on CIFAR-10
# (docs/guide/figures-experiment.md).
demo: $(STAMP)
	$(BIN)/landscape figures --out-dir out/figures

# The documentation site (mkdocs.yml: the guide pages of docs/, README.md as the home page, the
# API reference from the docstrings, the CLI reference from click) into site/. --strict: a broken
# link, anchor or reference, or a docstring that griffe cannot parse, fails the build. Needs only
# the package's own dependencies and the docs extra, not TensorFlow.
$(DOCS_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site *.egg-info
