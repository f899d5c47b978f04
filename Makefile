# Two commands: `make demo` and `make test`. Both create .venv with pip on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

# Data from Debian packages, read in place: WordNet 3.0 for the text tasks (and their tests).
WORDNET_FILE := /usr/share/wordnet/data.noun

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

system-deps:
	@if [ ! -f $(WORDNET_FILE) ] && [ -z "$$HYPERMETA_WORDNET" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's wordnet-base (WordNet 3.0, for the text tasks)"; \
	    apt-get install -y -q wordnet-base >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q wordnet-base >/dev/null; }; \
	  else \
	    echo "WordNet 3.0 is missing: run 'sudo apt-get install wordnet-base' (or set"; \
	    echo "HYPERMETA_WORDNET to a WordNet dict folder); the text tasks and tests read it."; \
	    exit 1; \
	  fi; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/python examples/sinusoid_demo.py

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy src/hypermeta
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
