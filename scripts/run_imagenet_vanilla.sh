#!/usr/bin/env sh
# ImageNet baselines on NPROC GPUs through torchrun (DDP): ResNet34 (the teacher of the ResNet34 -> ResNet18 line)
# and ResNet18 (the student trained alone). Recipe of the peers' ImageNet runs (CRD, SemCKD, CTKD, mdistiller):
# global batch 256, lr 0.1, x0.1 after epochs 30/60/90, 100 epochs, weight decay 1e-4, momentum 0.9.
# --batch_size is per process: the global batch is NPROC x BATCH, so BATCH = 256 / NPROC (32 on 8 GPUs).
# Data: $DATA/imagenet/{train,val} in ImageFolder layout. Extra flags pass through, e.g. --resume.
#   NPROC=4 sh scripts/run_imagenet_vanilla.sh
NPROC=${NPROC:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
DATA=${DATA:-./data}
TORCHRUN=${TORCHRUN:-torchrun}
if [ $((GLOBAL_BATCH % NPROC)) -ne 0 ]; then
    echo "error: GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of NPROC=$NPROC" >&2; exit 2
fi
BATCH=$((GLOBAL_BATCH / NPROC))
for model in ResNet34 ResNet18; do
    $TORCHRUN --nproc_per_node=$NPROC train_teacher.py --dataset imagenet --data_root "$DATA" --model $model \
        --batch_size $BATCH --learning_rate 0.1 --lr_decay_epochs 30,60,90 --epochs 100 --weight_decay 1e-4 \
        --num_workers 8 --save_freq 10 "$@" || exit 1
done
