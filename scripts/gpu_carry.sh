#!/usr/bin/env bash
# Prepares .gpu-carry/ (git-ignored, ~25 MB) for the GPU check on a GPU machine without network whose Python
# already has CUDA torch and lightning: wheels of lightning-embed itself and of what that machine lacks or
# holds in other versions (pinned to this venv's versions; Python ${PYTHON_VERSION:-3.12}, x86-64), and
# SmolLM2-135M's config + tokenizer (its weights package is too large to carry; the check then trains the
# same architecture from random weights). On that machine, `bash scripts/gpu_device_run.sh OUT_DIR` runs it.
# See "GPU check" in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${PYTHON_VERSION:-3.12}
# Pure-Python packages only: compiled ones (tokenizers, safetensors, pyarrow) are taken from that machine.
PACKAGES="jsonargparse docstring-parser typeshed-client datasets dill multiprocess sentence-transformers transformers peft"
PINNED=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $PACKAGES)
rm -rf .gpu-carry
mkdir -p .gpu-carry/whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu-carry/whl $PINNED
# The project as a wheel: its tuning strategies are entry points, which need installed metadata.
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w .gpu-carry/whl .
"$PY" benchmarks/gpu_check.py --export-architecture .gpu-carry/smollm2-135m
du -sh .gpu-carry
