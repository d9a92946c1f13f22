#!/usr/bin/env bash
# Paper result (b): mean JCT and queuing delay, windowed FCFS vs windowed ISRTF (ELIS: -19.6% JCT,
# -16.75% queuing), A100/Llama-2-13B profile, batch 4, W=50, alpaca_eval test-split requests,
# Gamma arrivals with the Azure-conv cv at 5 loads, then the Azure conv trace replayed at 4 time
# scales (conf/preset/paper_b*.yaml). Predictor: the learned minilm checkpoint when it exists,
# else noisy_oracle (the table names the one used; PRED=<name> forces one). Extra Hydra overrides are passed through.
# Usage: scripts/paper_b_jct.sh [overrides]  -> $FIG/paper_b_jct_<predictor>.png, outputs/paper/paper_b_<predictor>.md
# ELIS_WANDB=1 also logs the run folder + figure to W&B (offline unless WANDB_MODE=online; `wandb sync` later).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
FIG="${FIG:-$OUT}"   # FIG=docs/figures refreshes the README figures
PRED="${PRED:-$([ -f models/minilm-alpaca_eval/best.ckpt ] && echo minilm || echo noisy_oracle)}"
nice -n 10 "$PY" run_experiment.py preset=paper_b predictor="$PRED" paths.output_dir="$OUT/b_gamma_$PRED" "$@"
nice -n 10 "$PY" run_experiment.py preset=paper_b_trace predictor="$PRED" paths.output_dir="$OUT/b_trace_$PRED" "$@"
"$PY" -m elis.experiments.figures b "$OUT/b_gamma_$PRED" --trace "$OUT/b_trace_$PRED" \
  --png $FIG/paper_b_jct_$PRED.png --md "$OUT/paper_b_$PRED.md"
if [ "${ELIS_WANDB:-0}" = 1 ]; then "$PY" -m elis.experiments.tracking "$OUT/b_gamma_$PRED" "$OUT/b_trace_$PRED" --figure $FIG/paper_b_jct_$PRED.png; fi
