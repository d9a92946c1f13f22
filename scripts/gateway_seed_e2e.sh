#!/bin/bash
# backend serve.py (SmolLM2 in-process, W=50) and front serve.py (worker=remote, FCFS windowed, W=8), real entry points.
# Run from anywhere: PYTHON=/path/to/venv/python scripts/gateway_seed_e2e.sh
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
PY=${PYTHON:-python}
nice -n 10 $PY serve.py port=8731 max_batch_size=4 hydra.run.dir=${TMPDIR:-/tmp}/elis_seed_run_b > ${TMPDIR:-/tmp}/elis_seed_backend.log 2>&1 &
echo $! > ${TMPDIR:-/tmp}/elis_seed_backend.pid
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8731/health >/dev/null && break; sleep 2; done
nice -n 10 $PY serve.py port=8732 worker=remote 'worker.urls=[http://127.0.0.1:8731]' worker.model_name=smollm2 window_tokens=8 hydra.run.dir=${TMPDIR:-/tmp}/elis_seed_run_f > ${TMPDIR:-/tmp}/elis_seed_front.log 2>&1 &
echo $! > ${TMPDIR:-/tmp}/elis_seed_front.pid
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8732/health >/dev/null && break; sleep 2; done
$PY scripts/gateway_seed_e2e_client.py
kill $(cat ${TMPDIR:-/tmp}/elis_seed_front.pid) $(cat ${TMPDIR:-/tmp}/elis_seed_backend.pid)
