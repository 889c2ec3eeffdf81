#!/usr/bin/env bash
# Prepares .gpu-carry/ (git-ignored, ~20 MB) for benchmarks/gpu_check.py on a GPU machine without network
# whose Python already has CUDA torch, lightning and peft: wheels of what it lacks (pinned to this venv's
# versions, Python 3.12 x86-64) and SmolLM2-135M's config + tokenizer (its weights package is too large to
# carry; the check then trains the same architecture from random weights). See "GPU check" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PACKAGES="jsonargparse docstring-parser typeshed-client datasets dill multiprocess sentence-transformers transformers"
PINNED=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $PACKAGES)
rm -rf .gpu-carry
mkdir -p .gpu-carry/whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu-carry/whl $PINNED
"$PY" benchmarks/gpu_check.py --export-architecture .gpu-carry/smollm2-135m
du -sh .gpu-carry
