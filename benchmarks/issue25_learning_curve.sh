#!/bin/bash
# Issue 25, the cost of the next step: how held-out F1 on new parts grows with the number of training parts. On a
# fold of the k-fold over parts (FOLD, default 1: fold 0's reference chose its best/ from epochs 25-30 only, see
# TRAINING.md), the reference's recipe (benchmarks/issue25_kfold.sh, 30 x 500 steps from the GR backbone) is
# trained on a share of each class's training parts (`engines split --train-share`, nested:
# the quarter's parts are among the half's), with the fold's validation and held-out parts unchanged, and judged by
# engines accept. The fold's reference (runs/kfold/ref-fI, all its training parts) is the share-1 point.
# Each share's network is also judged on its own training images (`engines eval --split-part train`, the fit).
# Each step resumes from its checkpoint and a finished one is skipped, so the same command goes on across sessions
# (about 80 minutes a share on 2 quiet cores). Reports go to docs/results/issue25/learning-curve/, and the table of
# the shares beside the reference to docs/results/issue25/learning-curve.md (kfold_table.py; commit them).
# From the repository root: nohup bash benchmarks/issue25_learning_curve.sh > runs/learning-curve.log 2>&1 &
cd "$(dirname "$0")/.."
DATA=../shared/data/magnetic-tile
FOLD=${FOLD:-1}
PY="nice -n 5 .venv/bin/python -m engines.cli"
RUNS=runs/learning-curve
DOCS=docs/results/issue25/learning-curve
mkdir -p $RUNS $DOCS
COMMON="--optimizer adam --loss ce+dice --amp --class-balanced --defect-fraction 0.35 --hard-negatives 0.4 \
 --validate-as station --threads 2 --quiet"
for share in ${SHARES:-0.5 0.25}; do
  name=share$share-f$FOLD SPLIT=$RUNS/split-$share-f$FOLD.json
  if [ ! -f $SPLIT ]; then
    $PY split --data $DATA --out $SPLIT --folds 5 --fold $FOLD --validation 0.15 \
      --not-train station/samples/magnetic-tile --train-share $share > $SPLIT.summary.json || exit 1
  fi
  if [ ! -f $RUNS/$name/model.safetensors ]; then
    echo "$(date) train $name" >> $RUNS/progress
    $PY train bffn --data $DATA --split $SPLIT --out $RUNS/$name --init-backbone gr-neu-seg --backbone-lr 0.1 \
      --epochs 30 --steps-per-epoch 500 --lr 1e-3 $COMMON >> $RUNS/$name.stdout.log 2>&1 || exit 1
  fi
  if [ ! -f $RUNS/accept-$name/acceptance.json ]; then
    echo "$(date) accept $name" >> $RUNS/progress
    $PY accept --weights $RUNS/$name/best --data $DATA --split $SPLIT --out $RUNS/accept-$name --threads 2 \
      >> $RUNS/accept-$name.log 2>&1
  fi
  if [ ! -f $RUNS/eval-train-$name.json ]; then  # the fit: the share's network on its own training images
    $PY eval --weights $RUNS/$name/best --data $DATA --split $SPLIT --split-part train --threads 2 \
      --json $RUNS/eval-train-$name.json > /dev/null 2>> $RUNS/eval-train-$name.log
  fi
  cp $RUNS/eval-train-$name.json $DOCS/
  mkdir -p $DOCS/accept-$name
  cp $RUNS/accept-$name/acceptance.json $RUNS/accept-$name/holdout.json $DOCS/accept-$name/
  cp $RUNS/$name/train.log $DOCS/train-$name.log
  cp $SPLIT.summary.json $DOCS/split-$share-f$FOLD.summary.json
done
# the full point: the fold's reference (all its training parts), beside the shares in one table
mkdir -p $DOCS/accept-ref-f$FOLD
cp docs/results/issue25/kfold/accept-ref-f$FOLD/*.json $DOCS/accept-ref-f$FOLD/ || exit 1
.venv/bin/python benchmarks/kfold_table.py $DOCS --out docs/results/issue25/learning-curve.md \
  --json docs/results/issue25/learning-curve.json
echo "$(date) done" >> $RUNS/progress
