#!/usr/bin/env sh
# Distillation on CIFAR-100, resnet32x4 -> resnet8x4, one line per method with the weights the papers use.
# Teachers: sh scripts/fetch_pretrained_teachers.sh (published RepDistiller teachers) or sh scripts/run_cifar_vanilla.sh.
# Each line runs 240 epochs; pass extra flags through, e.g.  sh scripts/run_cifar_distill.sh --device cuda:0
T=./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth
S=resnet8x4

# RepDistiller (Tian et al., ICLR 2020) recipes: -r 1 -a 0 -b <method weight>, KD with -r 0.1 -a 0.9
python train_student.py --path_t $T --distill kd --model_s $S -r 0.1 -a 0.9 -b 0 --trial 1 "$@"
python train_student.py --path_t $T --distill hint --model_s $S -r 1 -a 0 -b 100 --trial 1 "$@"
python train_student.py --path_t $T --distill attention --model_s $S -r 1 -a 0 -b 1000 --trial 1 "$@"
python train_student.py --path_t $T --distill similarity --model_s $S -r 1 -a 0 -b 3000 --trial 1 "$@"
python train_student.py --path_t $T --distill correlation --model_s $S -r 1 -a 0 -b 0.02 --trial 1 "$@"
python train_student.py --path_t $T --distill vid --model_s $S -r 1 -a 0 -b 1 --trial 1 "$@"
python train_student.py --path_t $T --distill rkd --model_s $S -r 1 -a 0 -b 1 --trial 1 "$@"
python train_student.py --path_t $T --distill pkt --model_s $S -r 1 -a 0 -b 30000 --trial 1 "$@"
python train_student.py --path_t $T --distill abound --model_s $S -r 1 -a 0 -b 1 --trial 1 "$@"
python train_student.py --path_t $T --distill factor --model_s $S -r 1 -a 0 -b 200 --trial 1 "$@"
python train_student.py --path_t $T --distill fsp --model_s $S -r 1 -a 0 -b 50 --trial 1 "$@"
python train_student.py --path_t $T --distill nst --model_s $S -r 1 -a 0 -b 50 --trial 1 "$@"
python train_student.py --path_t $T --distill kdsvd --model_s $S -r 1 -a 0 -b 1 --trial 1 "$@"
python train_student.py --path_t $T --distill crd --model_s $S -r 1 -a 0 -b 0.8 --trial 1 "$@"
python train_student.py --path_t $T --distill crd --model_s $S -r 1 -a 1 -b 0.8 --trial 1 "$@"

# SemCKD's runs (Chen et al., AAAI 2021): IRG, and HKD in two passes through a resnet8x4_double assistant
python train_student.py --path_t $T --distill irg --model_s $S -r 1 -a 1 -b 0.005 --trial 1 "$@"
python train_student.py --path_t $T --distill pkt --model_s resnet8x4_double -r 1 -a 1 -b 30000 --trial 1 "$@"
python train_student.py --path_t "./save/student_model/S:resnet8x4_double_T:resnet32x4_cifar100_pkt_r:1.0_a:1.0_b:30000.0_1/resnet8x4_double_best.pth" \
    --distill hkd --model_s $S -r 1 -a 1 -b 1 --trial 1 "$@"

# CRCD (Zhu et al., CVPR 2021): its code's recipe, 250 epochs with the '240' mimic schedule (last 10 epochs CE only)
python train_student.py --path_t $T --distill crcd --model_s $S -r 1 -a 0.9 -b 1 --nce_k 500 --nce_t 0.05 \
    --epochs 250 --mimic_schedule 240 --trial 1 "$@"
python train_student.py --path_t $T --distill crcd --model_s $S -r 1 -a 0.9 -b 1 --nce_k 500 --nce_t 0.05 \
    --epochs 250 --mimic_schedule 240 --with_grad --grad_kd_type cos --grad_kd_weight 1 --trial 1 "$@"

# SemCKD (Chen et al., AAAI 2021)
python train_student.py --path_t $T --distill semckd --model_s $S -r 1 -a 1 -b 400 --trial 1 "$@"

# DKD (Zhao et al., CVPR 2022), mdistiller's resnet32x4 -> resnet8x4 setting (beta 8, warm-up 20 epochs)
python train_student.py --path_t $T --distill dkd --model_s $S -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 8 --dkd_T 4 \
    --warmup 20 --trial 1 "$@"

# CTKD (Li et al., AAAI 2023): learnable temperature on KD, global and instance-wise, and on DKD
python train_student.py --path_t $T --distill kd --model_s $S -r 0.1 -a 0.9 -b 0 --have_mlp 1 --mlp_name global \
    --t_start 1 --t_end 20 --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10 --trial 1 "$@"
python train_student.py --path_t $T --distill kd --model_s $S -r 0.1 -a 0.9 -b 0 --have_mlp 1 --mlp_name instance \
    --t_start 1 --t_end 20 --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10 --trial 1 "$@"
python train_student.py --path_t $T --distill dkd --model_s $S -r 1 -a 0 -b 1 --have_mlp 1 --mlp_name global \
    --decay_max 0 --decay_min -1 --decay_loops 10 --trial 1 "$@"

# CKD (Zhu et al., 2024): its own recipe (CE 1, CKD 100, tau 1, 480 epochs, cosine lr), not the 240-epoch protocol
python train_student.py --path_t $T --distill ckd --model_s $S -r 1 -a 0 -b 100 --ckd_T 1 --epochs 480 \
    --lr_schedule cosine --trial 1 "$@"

# DKD on mdistiller's other CIFAR-100 pairs, each with its beta (alpha 1, T 4, warm-up 20; lr 0.01 for
# ShuffleV1/ShuffleV2/MobileNetV2 students is applied automatically, as in RepDistiller and mdistiller)
python train_student.py --path_t ./save/models/resnet56_vanilla/ckpt_epoch_240.pth --distill dkd --model_s resnet20 -r 1 -a 0 -b 1 --dkd_beta 2 --trial 1 "$@"
python train_student.py --path_t ./save/models/resnet110_vanilla/ckpt_epoch_240.pth --distill dkd --model_s resnet32 -r 1 -a 0 -b 1 --dkd_beta 2 --trial 1 "$@"
python train_student.py --path_t ./save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth --distill dkd --model_s wrn_16_2 -r 1 -a 0 -b 1 --dkd_beta 6 --trial 1 "$@"
python train_student.py --path_t ./save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth --distill dkd --model_s wrn_40_1 -r 1 -a 0 -b 1 --dkd_beta 6 --trial 1 "$@"
python train_student.py --path_t ./save/models/vgg13_vanilla/ckpt_epoch_240.pth --distill dkd --model_s vgg8 -r 1 -a 0 -b 1 --dkd_beta 6 --trial 1 "$@"
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill dkd --model_s ShuffleV1 -r 1 -a 0 -b 1 --dkd_beta 8 --trial 1 "$@"
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill dkd --model_s ShuffleV2 -r 1 -a 0 -b 1 --dkd_beta 8 --trial 1 "$@"
python train_student.py --path_t ./save/models/ResNet50_vanilla/ckpt_epoch_240.pth --distill dkd --model_s MobileNetV2 -r 1 -a 0 -b 1 --dkd_beta 8 --trial 1 "$@"
python train_student.py --path_t ./save/models/vgg13_vanilla/ckpt_epoch_240.pth --distill dkd --model_s MobileNetV2 -r 1 -a 0 -b 1 --dkd_beta 6 --trial 1 "$@"
python train_student.py --path_t ./save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth --distill dkd --model_s ShuffleV1 -r 1 -a 0 -b 1 --dkd_beta 8 --trial 1 "$@"
