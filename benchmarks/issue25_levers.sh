#!/bin/bash
# Issue 25: each lever as a 1,500-step fine-tune of the part-wise reference, then judged by engines accept on the
# part-wise split; then the levers that helped on their own, combined, the same way. Re-running resumes (each run
# resumes from its checkpoint; finished runs are skipped). Name arms to run only those: issue25_levers.sh exposure-paste
# Needs the reference first (engines/weights/bffn-magnetic-tile/TRAINING.md, "The honest reference"): runs/ref-parts/best.
# Start it in the background from the repository root: nohup bash benchmarks/issue25_levers.sh > runs/levers.log 2>&1 &
#
# FOLD=I: the same arm on fold I of the k-fold by part instead (docs/splits/magnetic-tile-by-part-fold$I-of-5.json),
# fine-tuned from that fold's reference (runs/kfold/ref-fI/best, benchmarks/issue25_kfold.sh) into runs/kfold/ARM-fI
# and accepted against it into runs/kfold/accept-ARM-fI; its reports are copied to docs/results/issue25/kfold/, where
# benchmarks/kfold_table.py puts the arm beside the others: FOLD=0 bash benchmarks/issue25_levers.sh context
#
# Other starts and splits (benchmarks/issue25_ship_exposure.sh): SPLIT, REF (the weights fine-tuned from and judged
# against: a folder or a shipped name), RUN and ACCEPT (folders, {} standing for the arm) and PROGRESS from the
# environment win over the above.
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
if [ -n "$FOLD" ]; then
  : ${SPLIT:=docs/splits/magnetic-tile-by-part-fold$FOLD-of-5.json} ${REF:=runs/kfold/ref-f$FOLD/best}
  : ${RUN:="runs/kfold/{}-f$FOLD"} ${ACCEPT:="runs/kfold/accept-{}-f$FOLD"} ${PROGRESS:=runs/kfold/progress}
else
  : ${SPLIT:=docs/splits/magnetic-tile-by-part.json} ${REF:=runs/ref-parts/best}
  : ${RUN:="runs/lever-{}"} ${ACCEPT:="runs/accept-{}"} ${PROGRESS:=runs/levers.progress}
fi
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
  # the whole frame shrunk to one tile, scored beside the tiles (--context): the band is seen whole, edges and all
  [context]="--context 0.2"
  # the same crops without the pass on the line: on fold 0 the pass itself found no defect its tiles missed
  [whole]="--whole-crops 0.2"
  # validation F1 swings 0.1-0.2 from epoch to epoch while the loss falls: a moving average of the weights (about
  # the last 500 steps) is validated and kept instead of the last step's
  [ema]="--ema 0.998"
  # the two that act where the k-fold's errors are (2026-12-06): exposure (false alarms; it separated over folds
  # 0-2) and border (the misses lie at the image edge), together
  [exposure-border]="--photometric exposure --border 32 --edge-fraction 0.5"
)
for arm in ${@:-control exposure gain border paste exposure-paste}; do
  out=${RUN//\{\}/$arm} accept=${ACCEPT//\{\}/$arm}
  if [ ! -f $REF/model.safetensors ] && [ ! -f engines/weights/$REF/model.safetensors ]; then
    echo "no reference at $REF: train it first" >&2; exit 1
  fi
  if [ ! -f $out/model.safetensors ]; then
    echo "$(date) ${FOLD:+fold $FOLD: }train $arm" >> $PROGRESS
    nice -n 5 .venv/bin/python -m engines.cli train bffn --out $out $COMMON ${ARMS[$arm]} >> $out.stdout.log 2>&1 || exit 1
  fi
  if [ ! -f $accept/acceptance.json ]; then
    echo "$(date) ${FOLD:+fold $FOLD: }accept $arm" >> $PROGRESS
    nice -n 5 .venv/bin/python -m engines.cli accept --weights $out/best --against $REF --data $DATA --split $SPLIT \
      --out $accept --threads 2 >> $accept.log 2>&1
  fi
  if [ -n "$FOLD" ] && [ -f $accept/acceptance.json ]; then  # into the repository (commit them), and the table again
    mkdir -p docs/results/issue25/kfold/${accept##*/}
    cp $accept/acceptance.json $accept/holdout*.json docs/results/issue25/kfold/${accept##*/}/
    cp $out/train.log docs/results/issue25/kfold/train-$arm-f$FOLD.log
    .venv/bin/python benchmarks/kfold_table.py docs/results/issue25/kfold --out docs/results/issue25/kfold.md \
      --json docs/results/issue25/kfold.json
  fi
done
echo "$(date) ${FOLD:+fold $FOLD: }done" >> $PROGRESS
