#!/usr/bin/env bash
# Smoke test of every stage on one device (scripts/gpu_smoke.py): on a CUDA machine the GPU, else the CPU with
# small sizes. Writes benchmarks/results/gpu_smoke.json (GPU) or gpu_smoke_cpu.json (CPU); exit 0 when all pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "$PYTHON" scripts/gpu_smoke.py "$@"
