#!/usr/bin/env bash
# vLLM smoke test for a machine with a CUDA GPU (vLLM is not installable on the project's CPU
# machines, so this path is untested there). Usage: scripts/vllm_smoke.sh [model]
set -euo pipefail
MODEL="${1:-HuggingFaceTB/SmolLM2-135M-Instruct}"
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m pip install -q -e ".[vllm]"
export HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0
# 1. engine-level test: resume from token ids equals an uninterrupted generation
"$PY" -m pytest -q -m vllm tests/backends/test_vllm_worker.py
# 2. ISRTF windows on vLLM vs FCFS vs the oracle, and vLLM's own priority scheduler (static SJF)
"$PY" run_experiment.py worker=vllm preset=compare num_requests=40 max_tokens=400 \
    worker.model.name_or_path="$MODEL" predictor=oracle workload.rate_rps=4 plots=false
"$PY" run_experiment.py worker=vllm_priority num_requests=40 max_tokens=400 \
    worker.model.name_or_path="$MODEL" predictor=oracle workload.rate_rps=4 plots=false
