#!/bin/bash
# GR against its torchvision baselines and its ablations (issue 4), paper 001's protocol (engines compare), at an
# equal budget for every model (GR 3 + 3 epochs = 6 passes over the training images), 64-px inputs (Inception-v3:
# 75, its smallest), lr 0.01 (NEU-Seg again at the paper's 1e-3), on fold 1 of 4 of NEU-Seg (multi-label) and of
# magnetic tile. The 2 CPU cores run two model lists side by side (1 thread each; same folds, separate run
# folders); the last command of each set finds every run done and writes the table with the throughput measured
# side by side. Resumable: re-run it.
set -ex
source .venv/bin/activate
COMMON="--folds 4 --only-folds 1 --backbone resnet18 --size 64 --epochs 3 --pretrain-epochs 3 --lr 0.01 --quiet"
NEU=../shared/data/neu-seg
MT=../shared/data/magnetic-tile
engines compare --data $NEU --out runs/compare-cls-neu --models vgg16,gr-resnet50 $COMMON --threads 1 --bench-seconds 0 &
engines compare --data $NEU --out runs/compare-cls-neu --models gr,resnet50,inceptionv3,gr-nogr,gr-nopretrain,gr-linear \
    $COMMON --threads 1 --bench-seconds 0
wait
engines compare --data $NEU --out runs/compare-cls-neu \
    --models gr,gr-resnet50,resnet50,inceptionv3,vgg16,gr-nogr,gr-nopretrain,gr-linear $COMMON --threads 2
engines compare --data $MT --out runs/compare-cls-mt --models vgg16 $COMMON --threads 1 --bench-seconds 0 &
engines compare --data $MT --out runs/compare-cls-mt --models gr,gr-resnet50,resnet50,inceptionv3 $COMMON --threads 1 \
    --bench-seconds 0
wait
engines compare --data $MT --out runs/compare-cls-mt --models gr,gr-resnet50,resnet50,inceptionv3,vgg16 $COMMON --threads 2
# The same NEU-Seg table at the paper's learning rate, 1e-3 (the linear-space ablation diverges at 0.01):
LR3="--data $NEU --out runs/compare-cls-neu-lr1e-3 $COMMON --lr 0.001"
engines compare $LR3 --models vgg16 --threads 1 --bench-seconds 0 &
engines compare $LR3 --models gr,gr-linear,resnet50,gr-nogr,gr-nopretrain,inceptionv3,gr-resnet50 --threads 1 \
    --bench-seconds 0
wait
engines compare $LR3 --models gr,gr-resnet50,resnet50,inceptionv3,vgg16,gr-nogr,gr-nopretrain,gr-linear --threads 2
echo ALL DONE
