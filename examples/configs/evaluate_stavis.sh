#!/usr/bin/env bash
# SPEC §12's audio-visual table: each database's test videos of the three splits, each scored with the
# model trained on that split (STAViS protocol: blur σ = 2 px, per frame -> per video -> mean over videos).
# Usage: bash examples/configs/evaluate_stavis.sh [DATA_ROOT] [RUNS] [RESULTS]
set -euo pipefail
DATA=${1:-data/stavis}; RUNS=${2:-runs}; RESULTS=${3:-results/stavis}
for db in DIEM Coutrot_db1 Coutrot_db2 AVAD ETMD_av SumMe; do
  dtfsal evaluate --dataset "$db" --root "$DATA" --fold all --model "$RUNS/stage2_split{fold}/best" \
    --metrics cc,nss,auc_judd,sim,kld,sauc --output "$RESULTS/$db"
done
