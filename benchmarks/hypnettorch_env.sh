#!/bin/sh
# Make benchmarks/.venv-hypnettorch: hypnettorch (von Oswald et al.'s library) beside torch 2.13.0
# (the CPU wheel on disk, as in the Makefile), for benchmarks/continual.py's hypnettorch baseline.
# hypnettorch is never a dependency of hypermeta; its own code is never copied here.
set -e
cd "$(dirname "$0")"
VENV=.venv-hypnettorch
PY=${PY:-python3}
test -x $VENV/bin/python || $PY -m venv $VENV
$VENV/bin/pip install --quiet --upgrade pip
$VENV/bin/pip install --quiet torch==2.13.0 numpy matplotlib
# hypnettorch 0.0.4 declares no requirements; its hnets/mnets/regulariser import torch, numpy
# and matplotlib
$VENV/bin/pip install --quiet --no-deps hypnettorch==0.0.4
$VENV/bin/python -c "import hypnettorch, torch; from hypnettorch.hnets import ChunkedHMLP; \
from hypnettorch.mnets import MLP; import hypnettorch.utils.hnet_regularizer; \
print('hypnettorch', hypnettorch.__version__ if hasattr(hypnettorch, '__version__') else '0.0.4', 'torch', torch.__version__)"
