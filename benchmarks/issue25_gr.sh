#!/bin/bash
# Issue 25, the second opinion: the paper's GR classifier (paper 001) trained on whole magnetic-tile images of the
# part-wise training side (224 px, one grey channel, its ResNet-18 started from the exposure arm's BFFN backbone,
# which learned these tiles on the same training side), then fused with that arm's segmenter by
# `engines accept --classifier`: the label threshold of each class is learned on validation for the fused verdict
# (FAIL on a defect or a label), and held-out is judged once, fused. The same command resumes from the checkpoint;
# finished steps are skipped.
# From the repository root: nohup bash benchmarks/issue25_gr.sh > runs/gr.log 2>&1 &
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
SPLIT=docs/splits/magnetic-tile-by-part.json
SEG=runs/lever-exposure/best   # benchmarks/issue25_levers.sh, arm "exposure"
OUT=${GR_OUT:-runs/gr-parts-lr01}
if [ ! -f $OUT/model.safetensors ]; then
  echo "$(date) train gr" >> runs/levers.progress
  nice -n 5 .venv/bin/python -m engines.cli train gr --data $DATA --split $SPLIT --in-channels 1 --size 224 \
    --backbone resnet18 --init-backbone $SEG --epochs 15 --lr 0.01 --out $OUT --threads 2 --quiet \
    >> $OUT.stdout.log 2>&1 || exit 1
fi
if [ ! -f runs/accept-exposure-gr/acceptance.json ]; then
  echo "$(date) accept exposure + gr" >> runs/levers.progress
  nice -n 5 .venv/bin/python -m engines.cli accept --weights $SEG --classifier $OUT --data $DATA --split $SPLIT \
    --out runs/accept-exposure-gr --threads 2 >> runs/accept-exposure-gr.log 2>&1
fi
echo "$(date) gr done" >> runs/levers.progress
