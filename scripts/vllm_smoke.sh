#!/usr/bin/env bash
# vLLM behind the ELIS gateway, on a machine with a CUDA GPU (vLLM cannot run on the project's
# CPU machines: this script is untested there). It
#   1. installs vLLM in its own venv (it brings a CUDA torch; the project's venv keeps torch CPU),
#   2. starts `vllm serve` with a small model (prefix caching on, so a resumed window's prefix
#      is not recomputed),
#   3. checks the two server features the gateway's remote worker needs: a token-id prompt on
#      /v1/completions and the generated ids back (`return_token_ids`, vLLM >= 0.10.2),
#   4. starts two gateways in front of it (sched=fcfs and sched=isrtf, worker=remote),
#   5. replays the same workload through vLLM alone and both gateways, 3 interleaved repetitions,
#      with the load generator (run folder under outputs/loadgen/…, spread.md has the intervals).
# Usage: scripts/vllm_smoke.sh [hub model id]       env: VLLM_VERSION PY VENV_VLLM NUM_REQUESTS RATE
set -euo pipefail
MODEL="${1:-HuggingFaceTB/SmolLM2-135M-Instruct}"
VLLM_VERSION="${VLLM_VERSION:-0.33.0}"   # the release whose OpenAI server protocol the remote worker was checked against
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
VENV_VLLM="${VENV_VLLM:-.venv-vllm}"
NUM_REQUESTS="${NUM_REQUESTS:-100}"
RATE="${RATE:-8}"
export HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 TOKENIZERS_PARALLELISM=false
LOG=outputs/vllm_smoke
mkdir -p "$LOG"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

wait_up() {  # URL, seconds
  for _ in $(seq 1 "$2"); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "not up after $2 s: $1 (logs in $LOG)" >&2; exit 1
}

[ -x "$VENV_VLLM/bin/vllm" ] || { python3 -m venv "$VENV_VLLM"; "$VENV_VLLM/bin/pip" install -q "vllm==$VLLM_VERSION"; }
"$VENV_VLLM/bin/vllm" serve "$MODEL" --port 8001 --enable-prefix-caching --max-model-len 2048 \
    --gpu-memory-utilization 0.5 --seed 0 > "$LOG/vllm.log" 2>&1 &
PIDS+=($!)
wait_up http://127.0.0.1:8001/health 600

# token-id prompt in, token ids out: the contract worker=remote (resume=token_ids) relies on
curl -sf http://127.0.0.1:8001/v1/completions -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"prompt\": [1, 2, 3, 4], \"max_tokens\": 5, \"return_token_ids\": true}" \
  | "$PY" -c 'import json,sys; c=json.load(sys.stdin)["choices"][0]; assert len(c["token_ids"])>=1, c; print("vLLM token-id protocol ok:", c["token_ids"])'

GW="worker=remote worker.urls=[http://127.0.0.1:8001] worker.model_name=$MODEL worker.tokenizer=$MODEL num_workers=1"
"$PY" serve.py $GW sched=fcfs port=8101 > "$LOG/gateway_fcfs.log" 2>&1 &
PIDS+=($!)
# ISRTF needs a predictor: the noisy oracle has no truth at serving time, so use the learned one
# if it was trained (`python train.py`), else the prompt-length baseline.
PRED="${PREDICTOR:-prompt_length}"
"$PY" serve.py $GW sched=isrtf predictor="$PRED" port=8102 > "$LOG/gateway_isrtf.log" 2>&1 &
PIDS+=($!)
wait_up http://127.0.0.1:8101/health 300
wait_up http://127.0.0.1:8102/health 300

"$PY" -m elis.experiments.loadgen num_requests="$NUM_REQUESTS" workload=gamma workload.rate_rps="$RATE" \
    max_tokens=400 repetitions=3 order=abba \
    "endpoints=[{name: vllm_direct, base_url: 'http://127.0.0.1:8001/v1', model: '$MODEL', policy: vllm_fcfs},
                {name: gateway_fcfs, base_url: 'http://127.0.0.1:8101/v1', policy: fcfs},
                {name: gateway_isrtf, base_url: 'http://127.0.0.1:8102/v1', policy: isrtf}]"
