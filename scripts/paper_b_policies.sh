#!/usr/bin/env bash
# Every policy (fcfs, sjf, isrtf, srtf_oracle, las, mlfq, gittins x windowed/continuous) on the
# paper-(b) workload, 3 seeds, mean ± 95% interval (conf/preset/paper_b_policies.yaml).
# Usage: scripts/paper_b_policies.sh [overrides]   e.g. predictor=gbdt workload.rate_rps=0.3
# -> $OUT/b_policies_<predictor>/comparison.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
PRED="${PRED:-noisy_oracle}"
nice -n 10 "$PY" run_experiment.py preset=paper_b_policies predictor="$PRED" \
  paths.output_dir="$OUT/b_policies_$PRED" "$@"
cat "$OUT/b_policies_$PRED/comparison.md"
