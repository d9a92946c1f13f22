#!/usr/bin/env bash
# Paper result (c): for 10..50 workers, the highest Poisson rate with mean queuing delay < 0.5 s
# (ELIS: near-linear, 18.77 req/s on 50 H100 workers), simulated with the H100/Llama-2-13B
# profile, ISRTF and FCFS windowed, noisy-oracle predictor (elis/serving/bench.py, bisection).
# Three seeds (lengths, arrivals, noise); the table gives mean ± 95% interval. Extra bench options
# are passed through (e.g. --seeds 0 1 2 3 4).
# Usage: scripts/paper_c_scalability.sh [bench options]  -> $FIG/paper_c_scalability.png, outputs/paper/paper_c.md
# ELIS_WANDB=1 also logs the run folder + figure to W&B (offline unless WANDB_MODE=online; `wandb sync` later).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
FIG="${FIG:-$OUT}"   # FIG=docs/figures refreshes the README figures
mkdir -p "$OUT"
nice -n 10 "$PY" -m elis.serving.bench scalability --workers 10 20 30 40 50 --profile h100_llama2_13b \
  --seeds 0 1 2 --out "$OUT/scalability.json" "$@"
"$PY" -m elis.experiments.figures c "$OUT/scalability.json" --png $FIG/paper_c_scalability.png --md "$OUT/paper_c.md"
