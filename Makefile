# Two commands: `make demo` and `make test`. Both create .venv with pip on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

# Benchmark data is never committed: use ../shared/data when it exists, unless already set.
ifeq ($(HYPERMETA_DATA),)
ifneq ($(wildcard ../shared/data/omniglot/omniglot.npz),)
export HYPERMETA_DATA := $(abspath ../shared/data)
endif
endif

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: pip finds the CPU wheel on disk (uv/poetry would fetch a CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/sinusoid_demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy src/hypermeta
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
