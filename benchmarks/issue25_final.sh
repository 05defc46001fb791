#!/bin/bash
# Issue 25, the final recipe's long run: the one lever that held on validation and held-out together, exposure
# augmentation (benchmarks/issue25_levers.sh; docs/results/issue25/levers.md), trained like the part-wise reference
# (30 x 500 steps from the shipped GR's backbone) on the part-wise training side, then judged by engines accept
# against the reference. The same command resumes from the checkpoint; a finished run is skipped.
# From the repository root: nohup bash benchmarks/issue25_final.sh > runs/final.log 2>&1 &
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
SPLIT=docs/splits/magnetic-tile-by-part.json
OUT=runs/final-parts
if [ ! -f $OUT/model.safetensors ]; then
  echo "$(date) train final" >> runs/levers.progress
  nice -n 5 .venv/bin/python -m engines.cli train bffn --data $DATA --out $OUT --split $SPLIT \
    --init-backbone gr-neu-seg --backbone-lr 0.1 --epochs 30 --steps-per-epoch 500 --optimizer adam --lr 1e-3 \
    --loss ce+dice --amp --class-balanced --defect-fraction 0.35 --hard-negatives 0.4 --validate-as station \
    --photometric exposure --threads 2 --quiet >> $OUT.stdout.log 2>&1 || exit 1
fi
if [ ! -f runs/accept-final/acceptance.json ]; then
  echo "$(date) accept final" >> runs/levers.progress
  nice -n 5 .venv/bin/python -m engines.cli accept --weights $OUT/best --against runs/ref-parts/best --data $DATA \
    --split $SPLIT --out runs/accept-final --threads 2 >> runs/accept-final.log 2>&1
fi
echo "$(date) final done" >> runs/levers.progress
