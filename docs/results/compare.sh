#!/bin/bash
# Continues runs/compare.sh with the tuned-threshold evaluation; resumable: re-run to go on.
set -x
source .venv/bin/activate
while pgrep -f "engines compare --data ../shared/data/magnetic-tile --folds 4 --only-folds 1 --out" >/dev/null; do sleep 10; done
COMMON="--epochs 5 --steps-per-epoch 100 --optimizer adam --lr 1e-3 --loss ce+dice --no-validate --threads 2 --quiet"
MT=../shared/data/magnetic-tile
engines compare --data $MT --folds 4 --only-folds 1 --out runs/compare-mt $COMMON
mkdir -p runs/ablation-mt/fold1 && cp -rn runs/compare-mt/fold1/bffn runs/ablation-mt/fold1/
engines compare --data $MT --folds 4 --only-folds 1 --models bffn,bffn-nosam,bffn-sum,bffn-nosam-sum --out runs/ablation-mt $COMMON
engines compare --data $MT --folds 4 --only-folds 1,2 --out runs/compare-mt $COMMON
engines compare --data $MT --folds 4 --only-folds 1,2,3 --out runs/compare-mt $COMMON
engines compare --data $MT --folds 4 --out runs/compare-mt $COMMON
engines compare --data ../shared/data/neu-seg --folds 4 --out runs/compare-neu $COMMON
echo ALL DONE
