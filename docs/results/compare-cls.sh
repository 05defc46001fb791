#!/bin/bash
# GR against its torchvision baselines and its ablations (issue 4), paper 001's protocol (engines compare) at an
# equal budget every model gets (3 + 3 epochs of GR = 6 passes over the training images), 96-px inputs, lr 0.01,
# on fold 1 of 4 of NEU-Seg (multi-label) and of magnetic tile. Resumable: re-run to go on where it stopped.
set -ex
source .venv/bin/activate
COMMON="--folds 4 --only-folds 1 --backbone resnet18 --size 96 --epochs 3 --pretrain-epochs 3 --lr 0.01 --threads 2 --quiet"
MODELS=gr,resnet50,inceptionv3,vgg16,gr-nogr,gr-nopretrain,gr-linear
engines compare --data ../shared/data/neu-seg --out runs/compare-cls-neu --models $MODELS $COMMON
engines compare --data ../shared/data/magnetic-tile --out runs/compare-cls-mt --models $MODELS $COMMON
echo ALL DONE
