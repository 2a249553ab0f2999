#!/usr/bin/env sh
# ImageNet distillation, ResNet34 -> ResNet18, on NPROC GPUs through torchrun (DDP), one line per method.
# Common protocol (CRD / mdistiller r34_r18): global batch 256, lr 0.1, x0.1 after epochs 30/60/90, 100 epochs,
# weight decay 1e-4. --batch_size is per process: BATCH = 256 / NPROC (32 on 8 GPUs), global = NPROC x BATCH.
# Teacher T: torchvision's ResNet34 weights (what the peers distil from) saved under save/models/ResNet34_vanilla/
# (the folder prefix names the architecture), or a ResNet34 trained by scripts/run_imagenet_vanilla.sh.
# Data: $DATA/imagenet/{train,val}. Extra flags pass through, e.g.  NPROC=4 sh scripts/run_imagenet_distill.sh --resume
NPROC=${NPROC:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
DATA=${DATA:-./data}
TORCHRUN=${TORCHRUN:-torchrun}
T=${T:-./save/models/ResNet34_vanilla/resnet34-b627a593.pth}
S=ResNet18
if [ $((GLOBAL_BATCH % NPROC)) -ne 0 ]; then
    echo "error: GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of NPROC=$NPROC" >&2; exit 2
fi
BATCH=$((GLOBAL_BATCH / NPROC))
run() {
    $TORCHRUN --nproc_per_node=$NPROC train_student.py --dataset imagenet --data_root "$DATA" --path_t "$T" \
        --model_s $S --batch_size $BATCH --learning_rate 0.1 --lr_decay_epochs 30,60,90 --epochs 100 \
        --weight_decay 1e-4 --num_workers 8 --save_freq 10 --trial 1 "$@"
}

# KD as CTKD's ImageNet script runs it (CE 1, KL 1, T 4; SemCKD's weights too)
run --distill kd -r 1 -a 1 -b 0 --kd_T 4 "$@"
# CTKD (Li et al., AAAI 2023): CTKD's ImageNet script, global temperature, curriculum over 5 epochs
# (its script trains 120 epochs; here the common 100-epoch protocol: add --epochs 120 to follow it)
run --distill kd -r 1 -a 1 -b 0 --kd_T 4 --have_mlp 1 --mlp_name global --t_start 1 --t_end 20 --cosine_decay 1 \
    --decay_max 0 --decay_min -1 --decay_loops 5 "$@"
# CRD (Tian et al., ICLR 2020), mdistiller's r34_r18 crd.yaml: CE 1, CRD 0.8, 16384 negatives, T 0.07, momentum 0.5
run --distill crd -r 1 -a 0 -b 0.8 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --feat_dim 128 "$@"
# SemCKD (Chen et al., AAAI 2021), its README's ImageNet line: -r 1 -a 1 -b 50 (it trains 90 epochs, decay 30/60)
run --distill semckd -r 1 -a 1 -b 50 "$@"
# DKD (Zhao et al., CVPR 2022), mdistiller's r34_r18 dkd.yaml: CE 1, alpha 1, beta 0.5, T 1, warm-up 1 epoch
# (mdistiller runs it with batch 512 and lr 0.2, the same lr per sample as 256 / 0.1)
run --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 0.5 --dkd_T 1 --warmup 1 "$@"
# CKD (Zhu et al., 2024): CE 1 and its CIFAR weight 100, tau 1, on the 100-epoch protocol (no ImageNet config of
# its own was available to check against)
run --distill ckd -r 1 -a 0 -b 100 --ckd_T 1 "$@"
