#!/usr/bin/env bash
# The main job on the CIFAR-10 copy in ../shared: prune half the training rows with IF-Beta (ResNet-56
# teacher), distil a ResNet-20 from scratch on the rest for a few epochs, print student vs teacher accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHARED=${HF_IFBETA_SHARED:-../shared}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python recipes/distill_cifar.py \
  --train_file "$SHARED/data/cifar10/train.parquet" --test_file "$SHARED/data/cifar10/test.parquet" \
  --teacher cifar10_resnet56 --teacher_checkpoint "$SHARED/models/cifar10_resnet56.pt" \
  --student cifar10_resnet20 --prune_method if-beta --prune_ratio 0.5 \
  --num_train_epochs "${EPOCHS:-4}" --bf16 --output_dir out/demo "$@"
