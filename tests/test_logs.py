"""Logs that speak, whether or not stderr is a terminal: the first lines say the device, the data and its split sizes,
the steps per epoch, the global batch, the method and its weights; every --print_freq iterations a progress line
(epoch, iteration/total, loss terms, images/s); each epoch line ends with wall time, images/s and an ETA. The same
lines reach the run folder's train.log, and log.jsonl records time and throughput per epoch. stderr goes to a file
here, as under nohup or a batch scheduler: no progress bar may be drawn into it."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses run one torch thread: tiny models, and two processes never oversubscribe a shared CI machine.
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
COMMON = ["--dataset", "fashion_mnist", "--subset", "128", "--test_subset", "64", "--batch_size", "32",
          "--epochs", "2", "--print_freq", "2", "--lr_decay_epochs", "100", "--device", "cpu", "--num_workers", "0"]
NUMBER = r"\d+(?:\.\d+)?"
START = [r"device cpu \(CPU\); 1 process\(es\)",
         r"data fashion_mnist: 128 training / 64 test images, 32px, 10 classes",
         r"global batch 32 \(1 x --batch_size 32\); 4 steps per epoch"]
STUDENT_START = START + [r"resnet8 -> resnet8: --distill kd, -r 0\.1 -a 0\.9 -b 0, 2 epochs, lr 0\.05"]
TEACHER_START = START + [r"resnet8 from scratch: 2 epochs, lr 0\.05"]
STUDENT_PROGRESS = rf"epoch (\d) \[(\d)/4\] loss {NUMBER} \(cls {NUMBER} div {NUMBER}\) acc {NUMBER} \| \d+ img/s$"
TEACHER_PROGRESS = rf"epoch (\d) \[(\d)/4\] loss {NUMBER} \(cls {NUMBER}\) acc {NUMBER} \| \d+ img/s$"
EPOCH_END = rf"epoch (\d)/2  lr .* \| {NUMBER} s train \+ {NUMBER} s test, \d+ img/s, ETA \d+m\d\ds$"


def run_with_stderr_in_a_file(tmp_path, script, args):
    """Run `script` with stderr redirected to a file (not a terminal): (exit code, stderr text)."""
    path = tmp_path / "stderr.txt"
    with open(path, "w") as stderr:
        code = subprocess.run([sys.executable, script, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                              env=ENV, timeout=600).returncode
    return code, path.read_text()


def assert_logs_speak(text, start, progress):
    """`text` (stderr, or train.log without timestamps) holds the start lines in order before any epoch line, a
    progress line at every second iteration, and an epoch line ending with time, throughput and ETA."""
    lines = text.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    found = [next((i for i, line in enumerate(lines[:first_epoch]) if re.search(p, line)), None) for p in start]
    assert None not in found and found == sorted(found), (start, lines[:first_epoch])
    ticks = [tuple(map(int, m.groups())) for m in (re.search(progress, line) for line in lines) if m]
    assert ticks == [(1, 2), (1, 4), (2, 2), (2, 4)], lines
    assert [int(m.group(1)) for m in (re.search(EPOCH_END, line) for line in lines) if m] == [1, 2], lines


def without_timestamps(folder):
    return "\n".join(line[20:] for line in (folder / "train.log").read_text().splitlines())


def assert_epoch_records_time_and_throughput(folder):
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["time"] > 0 and record["epoch_time"] > 0 and record["images_per_s"] > 0
        assert record["test_time"] > 0  # the epoch's testing, shown beside its training and counted in the ETA
        assert record["eta_s"] >= 0
    assert records[1]["eta_s"] == 0  # nothing left after the last epoch


def test_a_student_run_speaks_to_a_file_and_to_train_log(tmp_path):
    teacher = tmp_path / "resnet8_teacher.pth"
    torch.manual_seed(7)
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10}, teacher)
    args = COMMON + ["--path_t", str(teacher), "--model_s", "resnet8", "--distill", "kd",
                     "--model_path", str(tmp_path / "student"), "--tb_path", str(tmp_path / "tb")]
    code, stderr = run_with_stderr_in_a_file(tmp_path, "train_student.py", args)
    assert code == 0, stderr[-3000:]
    assert "\r" not in stderr, "a progress bar was drawn into a file"
    assert_logs_speak(stderr, STUDENT_START, STUDENT_PROGRESS)
    (folder,) = (tmp_path / "student").iterdir()
    assert_logs_speak(without_timestamps(folder), STUDENT_START, STUDENT_PROGRESS)
    assert_epoch_records_time_and_throughput(folder)


def test_a_teacher_run_speaks_to_a_file_and_to_train_log(tmp_path):
    args = COMMON + ["--model", "resnet8", "--model_path", str(tmp_path / "models"), "--tb_path", str(tmp_path / "tb")]
    code, stderr = run_with_stderr_in_a_file(tmp_path, "train_teacher.py", args)
    assert code == 0, stderr[-3000:]
    assert "\r" not in stderr, "a progress bar was drawn into a file"
    assert_logs_speak(stderr, TEACHER_START, TEACHER_PROGRESS)
    (folder,) = (tmp_path / "models").iterdir()
    assert_logs_speak(without_timestamps(folder), TEACHER_START, TEACHER_PROGRESS)
    assert_epoch_records_time_and_throughput(folder)
