#!/usr/bin/env sh
# Fetch the published RepDistiller CIFAR-100 teachers into save/models/<name>_vanilla/ckpt_epoch_240.pth.
# RepDistiller's original host is gone; mdistiller republishes the same teachers as a release archive.
# Every file is verified by loading it strictly into its architecture (keys and shapes; see README).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
MODELS="resnet56 resnet110 resnet32x4 vgg13 wrn_40_2 ResNet50 resnet8x4 resnet20 wrn_16_2 vgg8"
MIRROR_TAR=https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar
ORIGINAL=http://shape2prog.csail.mit.edu/repo
mkdir -p save/models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if curl -fsSL --connect-timeout 15 -o "$tmp/teachers.tar" "$MIRROR_TAR" && tar -xf "$tmp/teachers.tar" -C "$tmp"; then
    for m in $MODELS; do
        src=$(find "$tmp" -path "*${m}_vanilla/ckpt_epoch_240.pth" | head -n 1)
        [ -n "$src" ] && mkdir -p "save/models/${m}_vanilla" && mv "$src" "save/models/${m}_vanilla/ckpt_epoch_240.pth"
    done
else
    echo "mirror $MIRROR_TAR not reachable; trying $ORIGINAL" >&2
    for m in $MODELS; do
        curl -fsL --connect-timeout 15 -o "$tmp/$m.pth" "$ORIGINAL/${m}_vanilla/ckpt_epoch_240.pth" || continue
        mkdir -p "save/models/${m}_vanilla" && mv "$tmp/$m.pth" "save/models/${m}_vanilla/ckpt_epoch_240.pth"
    done
fi

found=0
for m in $MODELS; do
    f="save/models/${m}_vanilla/ckpt_epoch_240.pth"
    [ -f "$f" ] || continue
    if "$PY" -m helper.verify_teacher "$f" "$m"; then found=$((found + 1)); else rm -f "$f"; fi
done
if [ "$found" -eq 0 ]; then
    echo "error: no teacher could be fetched (tried $MIRROR_TAR and $ORIGINAL); train them with sh scripts/run_cifar_vanilla.sh" >&2
    exit 1
fi
echo "$found teachers verified under save/models/"
