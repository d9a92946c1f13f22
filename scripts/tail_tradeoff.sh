#!/usr/bin/env bash
# Mean vs p99 JCT over the aging rate, paper-(b) workload, 3 seeds (conf/preset/paper_b_tail.yaml),
# then the trade-off table and figure (elis.experiments.tradeoff).
# Usage: scripts/tail_tradeoff.sh [overrides]  -> $OUT/b_tail_<predictor>/{tradeoff.md,tradeoff.png}
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
PRED="${PRED:-noisy_oracle}"
D="$OUT/b_tail_$PRED"
nice -n 10 "$PY" run_experiment.py preset=paper_b_tail predictor="$PRED" paths.output_dir="$D" plots=false "$@"
"$PY" -m elis.experiments.tradeoff "$D" --png "$D/tradeoff.png" --md "$D/tradeoff.md"
