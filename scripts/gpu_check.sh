#!/usr/bin/env bash
# The GPU device check, on a machine with one NVIDIA GPU and the package registry:
#   scripts/gpu_check.sh [OUTPUT]        (default runs/bench_gpu; gpu.json, gpu.png)
# Builds .venv as `make install` does, adds the gpu extra (JAX for CUDA), then runs `raynlp bench gpu`:
# a 1-GPU fine-tune of MiniLM, a BERT-base-sized masked-LM step loop (real tokens/s, model FLOPs utilisation),
# and `raynlp bench serve` with its replicas on the GPU. Stopped after 8 minutes; what finished is in gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
make install
.venv/bin/python -m pip install --quiet -e ".[gpu]"
timeout 480 .venv/bin/raynlp bench gpu --output "${1:-runs/bench_gpu}"
