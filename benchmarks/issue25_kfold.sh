#!/bin/bash
# Issue 25, k-fold over parts: the levers that lead on the single part-wise split (docs/results/issue25/levers.md),
# measured on all 940 images, each held out once. For each fold of docs/splits/magnetic-tile-by-part-fold$I-of-5.json
# (`engines split --folds 5 --fold I --validation 0.15 --not-train station/samples/magnetic-tile`):
#   1. the reference: today's recipe, 30 x 500 steps from the GR backbone (as runs/ref-parts), judged by accept;
#   2. the exposure arm: 1,500 steps of --photometric exposure from the reference's best/, accepted against it;
#   3. the second opinion: GR on whole images from the exposure arm's backbone, fused by `accept --classifier`
#      (folds in GR_FOLDS only, default "0 1": on both, the fused held-out verdicts were the segmenter's, image for
#      image, and GR costs 20 minutes a fold; GR_FOLDS="0 1 2 3 4" runs it everywhere);
#   4. the context arm (--context 0.2: the whole frame shrunk to one tile is scored too), the same crops without the
#      pass (--whole-crops 0.2), a moving average of the weights (--ema 0.998) and their control (the same 1,500
#      steps with no lever), all from the reference: `FOLD=I bash benchmarks/issue25_levers.sh control context whole
#      ema border` (ema was added with fold 2, and border, mirrored context with edge sampling, after it: over folds
#      0 and 1 the misses were at the image edge, 33 of 73 against 5 of 37 inside; folds 0 and 1 get both by the
#      same command). Folds 0-2's references were lost with runs/ (TRAINING.md), so folds 3 and 4 run the arms that
#      are still open: LEVERS, default "control border exposure-border" (context, whole and ema did not beat the
#      reference over the folds they ran on); LEVERS="control context whole ema border" is the set folds 0-2 ran.
#   5. the fit: the reference judged by `engines eval --split-part train` on its own training images
#      (eval-train-ref-fI.json): a class separated there but not on held-out parts is learned by heart.
# Every step resumes from its checkpoint and a finished one is skipped, so the same command goes on across sessions
# (about 3 hours a fold on 2 quiet cores). FOLDS="3 4" runs only those folds. Each finished fold's reports,
# per-image held-out records and training logs are copied into docs/results/issue25/kfold/ and the table
# (docs/results/issue25/kfold.md, made by benchmarks/kfold_table.py from those copies) is written again: commit them.
# From the repository root: nohup bash benchmarks/issue25_kfold.sh > runs/kfold.log 2>&1 &
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
PY="nice -n 5 .venv/bin/python -m engines.cli"
RUNS=runs/kfold
mkdir -p $RUNS
COMMON="--optimizer adam --loss ce+dice --amp --class-balanced --defect-fraction 0.35 --hard-negatives 0.4 \
 --validate-as station --threads 2 --quiet"
step() { echo "$(date) fold $1: $2" >> $RUNS/progress; }
for fold in ${FOLDS:-0 1 2 3 4}; do
  SPLIT=docs/splits/magnetic-tile-by-part-fold$fold-of-5.json
  REF=$RUNS/ref-f$fold ARM=$RUNS/exposure-f$fold GR=$RUNS/gr-f$fold
  if [ ! -f $REF/model.safetensors ]; then
    step $fold "train the reference"
    $PY train bffn --data $DATA --split $SPLIT --out $REF --init-backbone gr-neu-seg --backbone-lr 0.1 --epochs 30 \
      --steps-per-epoch 500 --lr 1e-3 $COMMON >> $REF.stdout.log 2>&1 || exit 1
  fi
  if [ ! -f $RUNS/accept-ref-f$fold/acceptance.json ]; then
    step $fold "accept the reference"
    $PY accept --weights $REF/best --data $DATA --split $SPLIT --out $RUNS/accept-ref-f$fold --threads 2 \
      >> $RUNS/accept-ref-f$fold.log 2>&1
  fi
  if [ ! -f $RUNS/eval-train-ref-f$fold.json ]; then  # the fit: the reference on its own training images
    step $fold "judge the reference on its training images"
    $PY eval --weights $REF/best --data $DATA --split $SPLIT --split-part train --threads 2 \
      --json $RUNS/eval-train-ref-f$fold.json > /dev/null 2>> $RUNS/eval-train-ref-f$fold.log
  fi
  if [ ! -f $ARM/model.safetensors ]; then
    step $fold "train the exposure arm"
    $PY train bffn --data $DATA --split $SPLIT --out $ARM --init $REF/best --epochs 3 --steps-per-epoch 500 \
      --lr 3e-4 --photometric exposure $COMMON >> $ARM.stdout.log 2>&1 || exit 1
  fi
  if [ ! -f $RUNS/accept-exposure-f$fold/acceptance.json ]; then
    step $fold "accept the exposure arm"
    $PY accept --weights $ARM/best --against $REF/best --data $DATA --split $SPLIT --out $RUNS/accept-exposure-f$fold \
      --threads 2 >> $RUNS/accept-exposure-f$fold.log 2>&1
  fi
  case " ${GR_FOLDS:-0 1} " in *" $fold "*) with_gr=1 ;; *) with_gr= ;; esac
  if [ -n "$with_gr" ] && [ ! -f $GR/model.safetensors ]; then
    step $fold "train GR"
    $PY train gr --data $DATA --split $SPLIT --in-channels 1 --size 224 --backbone resnet18 --init-backbone $ARM/best \
      --epochs 15 --lr 0.01 --out $GR --threads 2 --quiet >> $GR.stdout.log 2>&1 || exit 1
  fi
  if [ -n "$with_gr" ] && [ ! -f $RUNS/accept-exposure-gr-f$fold/acceptance.json ]; then
    step $fold "accept the exposure arm with GR"
    $PY accept --weights $ARM/best --classifier $GR --data $DATA --split $SPLIT \
      --out $RUNS/accept-exposure-gr-f$fold --threads 2 >> $RUNS/accept-exposure-gr-f$fold.log 2>&1
  fi
  FOLD=$fold bash benchmarks/issue25_levers.sh ${LEVERS:-control border exposure-border} || exit 1
  # the fold's reports and per-image records into the repository (commit them): the table is made from there
  for f in $RUNS/accept-*-f$fold; do
    mkdir -p docs/results/issue25/kfold/${f##*/}
    cp $f/acceptance.json $f/holdout*.json docs/results/issue25/kfold/${f##*/}/
  done
  cp $RUNS/eval-train-ref-f$fold.json docs/results/issue25/kfold/
  for run in ref exposure ${with_gr:+gr}; do
    cp $RUNS/$run-f$fold/train.log docs/results/issue25/kfold/train-$run-f$fold.log
  done
  .venv/bin/python benchmarks/kfold_table.py docs/results/issue25/kfold --out docs/results/issue25/kfold.md \
    --json docs/results/issue25/kfold.json
  step $fold "done"
done
