# `make test` and `make demo` each set up .venv on a fresh machine (only Python needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

# The whole suite but the tests marked slow (long end-to-end runs: ResNet-50, clusters,
# kill -9); `make test-slow` runs those.
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The main job: SGD and SAM ResNets on the embedded MNIST subset with 40 % wrong labels, 3 seeds;
# landscapes, sharpness, statistics and figures into out/figures (rerunning resumes; a directory
# from another configuration is refused). The README's figures/ are the same experiment on CIFAR-10.
demo: $(STAMP)
	$(BIN)/landscape figures --out-dir out/figures

clean:
	rm -rf $(VENV) build *.egg-info
