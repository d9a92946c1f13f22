#!/usr/bin/env bash
# Paper result (d): iterative vs single prediction and starvation: JCT by true-length tercile and
# max waiting time for FCFS, SJF, ISRTF, ISRTF+aging, ISRTF+promotion, oracle SRTF
# (conf/preset/paper_d.yaml: paper_b's setting at 0.45 req/s). Predictor as in paper_b_jct.sh.
# Usage: scripts/paper_d_starvation.sh [overrides]  -> $FIG/paper_d_starvation_<predictor>.png, outputs/paper/paper_d_<predictor>.md
# ELIS_WANDB=1 also logs the run folder + figure to W&B (offline unless WANDB_MODE=online; `wandb sync` later).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
FIG="${FIG:-$OUT}"   # FIG=docs/figures refreshes the README figures
PRED="${PRED:-$([ -f models/minilm-alpaca_eval/best.ckpt ] && echo minilm || echo noisy_oracle)}"
nice -n 10 "$PY" run_experiment.py preset=paper_d predictor="$PRED" paths.output_dir="$OUT/d_$PRED" "$@"
"$PY" -m elis.experiments.figures d "$OUT/d_$PRED" --png $FIG/paper_d_starvation_$PRED.png --md "$OUT/paper_d_$PRED.md"
if [ "${ELIS_WANDB:-0}" = 1 ]; then "$PY" -m elis.experiments.tracking "$OUT/d_$PRED" --figure $FIG/paper_d_starvation_$PRED.png; fi
