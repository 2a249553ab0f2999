#!/usr/bin/env bash
# Set up what is missing, idempotently: a virtual environment in .venv with requirements.txt,
# Debian's Fashion-MNIST files (the small real dataset for the quickstart and tests) and rsync (helper.launch
# freezes the code of its jobs with it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, numpy, tqdm, tensorboard, PIL, pytest, matplotlib, submitit, timm, sklearn" 2>/dev/null; then
    echo "setup: installing requirements.txt into .venv (torch is large: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
fi
# The repository on the environment's path: `python -m helper.table ...` and `import models` work from any folder.
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ "$(cat "$SITE/kd_repository.pth" 2>/dev/null)" != "$PWD" ]; then
    echo "$PWD" > "$SITE/kd_repository.pth"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST missing; run 'sudo apt-get install dataset-fashion-mnist' (or put its IDX files in ./data/fashion-mnist)" >&2
    fi
fi
if ! command -v rsync >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing rsync (helper.launch snapshots the code of its jobs with it)"
        apt-get install -y -qq rsync >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq rsync >/dev/null)
    else
        echo "setup: rsync missing; run 'sudo apt-get install rsync' to launch jobs with helper.launch" >&2
    fi
fi
