#!/usr/bin/env bash
# The GPU check in one command on a GPU machine without network, from a checkout that carries .gpu-carry/
# (made by scripts/gpu_carry.sh): installs the carried wheels into a private folder put ahead of the machine's
# own packages, prints the versions in use, then runs benchmarks/gpu_check.py on SmolLM2-135M's architecture.
#   bash scripts/gpu_device_run.sh OUT_DIR [gpu_check.py options, e.g. --time-limit 300]
# OUT_DIR receives env.txt, log.txt and gpu-check.txt/.json. See "GPU check" in the README.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu_device_run.sh OUT_DIR [gpu_check.py options]}
shift
PY=${PYTHON:-python3}
if [ ! -d .gpu-carry/whl ] || [ ! -d .gpu-carry/smollm2-135m ]; then
  echo "error: no .gpu-carry/ here; run scripts/gpu_carry.sh where the project is installed, and carry .gpu-carry" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
SITE=$(mktemp -d)/site
if ! "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$SITE" .gpu-carry/whl/*.whl; then
  echo "error: the carried wheels do not install with $PY; rerun scripts/gpu_carry.sh with PYTHON_VERSION set to its version" >&2
  exit 2
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
{
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" -c '
import importlib.metadata as m
import sys
print("python", sys.version.split()[0])
for name in ("torch", "lightning", "peft", "transformers", "tokenizers", "huggingface-hub", "accelerate",
             "sentence-transformers", "datasets", "pyarrow", "jsonargparse", "lightning-embed", "triton"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
import lightning_embed.strategy as s
print("strategies", ", ".join(s.strategy_names()))
'
} 2>&1 | tee "$OUT_DIR/env.txt"
"$PY" benchmarks/gpu_check.py --backbone .gpu-carry/smollm2-135m --out "$OUT_DIR/gpu-check" "$@" 2>&1 \
  | tee "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
