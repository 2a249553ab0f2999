#!/usr/bin/env bash
# The main job in miniature, offline on the CPU with real images (Fashion-MNIST), in the setting where distillation
# pays: a resnet20 teacher trained on 10000 images, then a resnet8 student that sees only 500 labelled images,
# trained from scratch and distilled with KD and with CRD+KD (one group: one teacher pass per batch); then the table
# of the runs (helper.table) and their curves (helper.plot).
# Usage: bash scripts/quickstart.sh [TRIAL] (default 0; the trial seeds every run; about 3 minutes on 2 cores);
# QUICKSTART_OUT=DIR writes elsewhere than save/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TRIAL=${1:-0}
OUT=${QUICKSTART_OUT:-save/quickstart}
PY=.venv/bin/python
COMMON=(--dataset fashion_mnist --test_subset 2000 --batch_size 64 --device cpu --trial "$TRIAL" --no_progress)
TEACHER_DATA=(--subset 10000 --epochs 4 --lr_decay_epochs 3)   # the teacher: 10000 images, 4 epochs
STUDENT_DATA=(--subset 500 --epochs 30 --lr_decay_epochs 20)   # every student: 500 images, 30 epochs
rm -rf "$OUT"

echo "== teacher: resnet20, cross-entropy, 10000 images"
$PY train_teacher.py "${COMMON[@]}" "${TEACHER_DATA[@]}" --model resnet20 --model_path $OUT/models --tb_path $OUT/tb
TEACHER=$OUT/models/resnet20_fashion_mnist_lr_0.05_decay_0.0005_trial_$TRIAL/resnet20_best.pth

echo "== student: resnet8 from scratch, 500 images"
$PY train_teacher.py "${COMMON[@]}" "${STUDENT_DATA[@]}" --model resnet8 --model_path $OUT/models --tb_path $OUT/tb

echo "== students: resnet8 distilled with KD (-r 0.1 -a 0.9 -b 0) and CRD + KD (-r 1 -a 1 -b 0.8), 500 images, one group"
PLAN=$OUT/plan.txt
printf -- '--distill kd -r 0.1 -a 0.9 -b 0\n--distill crd -r 1 -a 1 -b 0.8 --nce_k 256\n' > "$PLAN"
$PY train_student.py "${COMMON[@]}" "${STUDENT_DATA[@]}" --path_t "$TEACHER" --model_s resnet8 --plan "$PLAN" \
    --model_path $OUT/student --tb_path $OUT/tb

echo "== the table of these runs (helper.table) and their curves (helper.plot)"
$PY -m helper.table $OUT/student $OUT/models --with_baselines --csv $OUT/table.csv
$PY -m helper.plot $OUT/student $OUT/models --out $OUT/curves.png
