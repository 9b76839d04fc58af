#!/usr/bin/env bash
# SPEC §12's visual-only figures: stage 1's DTFSal(V) on DHF1K val (DHF1K protocol, every frame at ground-truth
# resolution) and on UCF-Sports test.
# Usage: bash examples/configs/evaluate_dhf1k.sh [DHF1K_ROOT] [UCF_ROOT] [MODEL] [RESULTS]
set -euo pipefail
DHF1K=${1:-data/DHF1K}; UCF=${2:-data/UCF-Sports}; MODEL=${3:-runs/stage1_dhf1k/best}; RESULTS=${4:-results}
dtfsal evaluate --dataset dhf1k --root "$DHF1K" --split val --model "$MODEL" --output "$RESULTS/dhf1k_val"
if [ -d "$UCF" ]; then
  dtfsal evaluate --dataset ucf_sports --root "$UCF" --split test --model "$MODEL" --output "$RESULTS/ucf_sports_test"
fi
