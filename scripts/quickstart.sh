#!/usr/bin/env bash
# The main job in miniature, offline on the CPU with real images (Fashion-MNIST): train a teacher and a student from
# scratch, distil the student with KD and with CRD+KD as one group (one teacher pass per batch), then print the
# table of the runs (helper.table) and draw their curves (helper.plot).
# Usage: bash scripts/quickstart.sh [EPOCHS] (default 5; about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EPOCHS=${1:-5}
DECAY=$(( EPOCHS * 3 / 5 > 0 ? EPOCHS * 3 / 5 : 1 ))  # lr x0.1 after 60% of the epochs, like 150 of 240
OUT=save/quickstart
PY=.venv/bin/python
COMMON=(--dataset fashion_mnist --subset 5000 --test_subset 2000 --epochs "$EPOCHS" --batch_size 64 --device cpu
        --lr_decay_epochs "$DECAY" --trial 0 --no_progress)
rm -rf "$OUT"

echo "== teacher: resnet20, cross-entropy"
$PY train_teacher.py "${COMMON[@]}" --model resnet20 --model_path $OUT/models --tb_path $OUT/tb
TEACHER=$OUT/models/resnet20_fashion_mnist_lr_0.05_decay_0.0005_trial_0/resnet20_best.pth

echo "== student: resnet8 from scratch"
$PY train_teacher.py "${COMMON[@]}" --model resnet8 --model_path $OUT/models --tb_path $OUT/tb

echo "== students: resnet8 distilled with KD (-r 0.1 -a 0.9 -b 0) and CRD + KD (-r 1 -a 1 -b 0.8), one group"
PLAN=$OUT/plan.txt
printf -- '--distill kd -r 0.1 -a 0.9 -b 0\n--distill crd -r 1 -a 1 -b 0.8 --nce_k 1024\n' > "$PLAN"
$PY train_student.py "${COMMON[@]}" --path_t "$TEACHER" --model_s resnet8 --plan "$PLAN" \
    --model_path $OUT/student --tb_path $OUT/tb

echo "== the table of these runs (helper.table) and their curves (helper.plot)"
$PY -m helper.table $OUT/student $OUT/models --csv $OUT/table.csv
$PY -m helper.plot $OUT/student/* $OUT/models/* --out $OUT/curves.png
