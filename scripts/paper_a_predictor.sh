#!/usr/bin/env bash
# Paper result (a): MAE per prediction step and R² of the learned predictor on alpaca_eval
# (ELIS: R² 0.852, MAE ~60 -> ~20 tokens over 8 steps). Trains only when the model folder is
# missing (a CPU run: MiniLM encoder, 3-generator subset, one held-out generator; ~1 h here).
# Usage: scripts/paper_a_predictor.sh   -> $FIG/paper_a_predictor.png, outputs/paper/paper_a.md
# ELIS_WANDB=1 also logs the run folder + figure to W&B (offline unless WANDB_MODE=online; `wandb sync` later).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-outputs/paper}"
FIG="${FIG:-$OUT}"   # FIG=docs/figures refreshes the README figures
MODEL=models/minilm-alpaca_eval
if [ ! -f "$MODEL/metrics.json" ]; then
  nice -n 10 "$PY" train.py predictor=minilm data=alpaca_eval \
    'subset.generators=[gpt4_1106_preview,Meta-Llama-3-70B-Instruct,claude-2.1]' \
    'subset.ood_generators=[Qwen1.5-72B-Chat]' predictor.head.generator_conditioning=true \
    ablations.iterative=false ablations.generator_conditioning=false trainer.max_epochs=20
fi
"$PY" -m elis.experiments.figures a "$MODEL/metrics.json" --png $FIG/paper_a_predictor.png --md "$OUT/paper_a.md"
if [ "${ELIS_WANDB:-0}" = 1 ]; then "$PY" -m elis.experiments.tracking "$MODEL" --name paper_a --dir "$OUT/a_wandb" --figure $FIG/paper_a_predictor.png; fi
