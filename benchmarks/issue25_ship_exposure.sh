#!/bin/bash
# Issue 25, the chosen lever on the shipped weights. Over folds 0-2 of the k-fold over parts
# (docs/results/issue25/kfold.md), 1,500 steps of exposure augmentation from a trained reference was the one lever
# that beat both the reference (+41 / -22, p = 0.023) and its control (the same steps with no lever, +41 / -21,
# p = 0.015). The shipped weights are such a reference, trained on split.json's training images, so the same
# fine-tune is run from them on those same images and judged by `engines accept --against` the shipped weights on
# split.json's validation part (held-out judged once): the two saw the same training images, so the comparison is
# fair between them, though split.json is a split by file (TRAINING.md). The candidate is shipped only if it wins
# there. The same command resumes from the checkpoint; a finished step is skipped.
# From the repository root: nohup bash benchmarks/issue25_ship_exposure.sh > runs/ship-exposure.log 2>&1 &
cd "$(dirname "$0")/.."
DOCS=docs/results/issue25/ship-exposure
mkdir -p runs $DOCS
# the exposure arm of benchmarks/issue25_levers.sh (its flags, written once there), from the shipped weights on
# their own split, into runs/ship-exposure, judged against them into runs/accept-ship-exposure
SPLIT=engines/weights/bffn-magnetic-tile/split.json REF=bffn-magnetic-tile RUN="runs/ship-{}" \
  ACCEPT="runs/accept-ship-{}" PROGRESS=runs/ship-exposure.progress bash benchmarks/issue25_levers.sh exposure || exit 1
[ -f runs/accept-ship-exposure/acceptance.json ] || { echo "no acceptance report: see runs/accept-ship-exposure.log" >&2; exit 1; }
cp runs/accept-ship-exposure/acceptance.json runs/accept-ship-exposure/holdout*.json \
  runs/accept-ship-exposure/validation*.json $DOCS/
cp runs/ship-exposure/train.log $DOCS/train.log
