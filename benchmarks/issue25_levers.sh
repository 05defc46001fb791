#!/bin/bash
# Issue 25: each lever as a 1,500-step fine-tune of the part-wise reference, then judged by engines accept on the
# part-wise split; then the levers that helped on their own, combined, the same way. Re-running resumes (each run
# resumes from its checkpoint; finished runs are skipped). Name arms to run only those: issue25_levers.sh exposure-paste
# Needs the reference first (engines/weights/bffn-magnetic-tile/TRAINING.md, "The honest reference"): runs/ref-parts/best.
# Start it in the background from the repository root: nohup bash benchmarks/issue25_levers.sh > runs/levers.log 2>&1 &
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
SPLIT=docs/splits/magnetic-tile-by-part.json
REF=runs/ref-parts/best
COMMON="--data $DATA --split $SPLIT --init $REF --epochs 3 --steps-per-epoch 500 --optimizer adam --lr 3e-4 \
 --loss ce+dice --amp --class-balanced --defect-fraction 0.35 --hard-negatives 0.4 --validate-as station --threads 2 --quiet"
declare -A ARMS=(
  [control]=""
  [exposure]="--photometric exposure"
  [gain]="--gain-target 110"
  [border]="--border 32 --edge-fraction 0.5"
  [paste]="--paste-fraction 0.3"
  # the two that helped on their own (2026-12-06): exposure (false alarms), paste (recall)
  [exposure-paste]="--photometric exposure --paste-fraction 0.3"
  # uneven (a band of another brightness, 13 of the 51 held-out defective images) was found 0/13 with exposure
  # augmentation: a 128 px tile inside the band looks like a brighter exposure. 256 px tiles see the band's edge.
  [exposure-tile256]="--photometric exposure --tile 256 --batch 8"
)
for arm in ${@:-control exposure gain border paste exposure-paste}; do
  out=runs/lever-$arm
  if [ ! -f $out/model.safetensors ]; then
    echo "$(date) train $arm" >> runs/levers.progress
    nice -n 5 .venv/bin/python -m engines.cli train bffn --out $out $COMMON ${ARMS[$arm]} >> $out.stdout.log 2>&1 || exit 1
  fi
  if [ ! -f runs/accept-$arm/acceptance.json ]; then
    echo "$(date) accept $arm" >> runs/levers.progress
    nice -n 5 .venv/bin/python -m engines.cli accept --weights $out/best --against $REF --data $DATA --split $SPLIT \
      --out runs/accept-$arm --threads 2 >> runs/accept-$arm.log 2>&1
  fi
done
echo "$(date) done" >> runs/levers.progress
