#!/usr/bin/env bash
# The main job in miniature, offline on the CPU with real images (Fashion-MNIST): train a teacher, a student
# from scratch, and the same student distilled with KD and with CRD; print a table of accuracies.
# Usage: bash scripts/quickstart.sh [EPOCHS] (default 5; about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EPOCHS=${1:-5}
DECAY=$(( EPOCHS * 3 / 5 > 0 ? EPOCHS * 3 / 5 : 1 ))  # lr x0.1 after 60% of the epochs, like 150 of 240
OUT=save/quickstart
PY=.venv/bin/python
COMMON=(--dataset fashion_mnist --subset 5000 --epochs "$EPOCHS" --batch_size 64 --num_workers 2 --device cpu
        --lr_decay_epochs "$DECAY" --seed 0 --no_progress)
rm -rf "$OUT"

echo "== teacher: resnet20, cross-entropy"
$PY train_teacher.py "${COMMON[@]}" --model resnet20 --model_path $OUT/models --tb_path $OUT/tb
TEACHER=$OUT/models/resnet20_fashion_mnist_lr_0.05_decay_0.0005_trial_0/resnet20_best.pth

echo "== student: resnet8 from scratch"
$PY train_teacher.py "${COMMON[@]}" --model resnet8 --model_path $OUT/models --tb_path $OUT/tb

STUDENT=(--path_t "$TEACHER" --model_s resnet8 --model_path $OUT/student --tb_path $OUT/tb)
echo "== student: resnet8 distilled with KD (-r 0.1 -a 0.9 -b 0)"
$PY train_student.py "${COMMON[@]}" "${STUDENT[@]}" --distill kd -r 0.1 -a 0.9 -b 0
echo "== student: resnet8 distilled with CRD + KD (-r 1 -a 1 -b 0.8, 1024 negatives)"
$PY train_student.py "${COMMON[@]}" "${STUDENT[@]}" --distill crd -r 1 -a 1 -b 0.8 --nce_k 1024

$PY - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*", "*", "results.json"))):
    run = os.path.basename(os.path.dirname(path))
    r = json.load(open(path))
    rows.append((run, r["best_acc"], r["last_acc"]))
print("\n%-72s %8s %8s" % ("run (Fashion-MNIST subset, CPU)", "best", "last"))
for run, best, last in rows:
    print("%-72s %8.2f %8.2f" % (run, best, last))
PY
