"""A student run killed with SIGKILL anywhere (mid-epoch, inside the atomic write of <arch>_last.pth, inside the copy
to <arch>_best.pth or ckpt_epoch_N.pth) and resumed ends as the uninterrupted run: every file of the run folder is
consistent (best.pth is the recorded best epoch, log.jsonl and TensorBoard hold each epoch once, no temporaries are
left) and the final weights are bit-identical. KD and CRD (its memory bank), on Fashion-MNIST, CPU, subprocesses."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "kill_worker.py")
FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
EPOCHS, STEPS_PER_EPOCH = 3, 4  # --subset 128 --batch_size 32
TIMING = {"time", "epoch_time", "test_time", "images_per_s", "eta_s"}  # wall-clock fields: the only ones allowed to differ
# Seeds whose best epoch is not the first (a kill inside a copy must hit a second best.pth).
METHODS = {"kd": ["--distill", "kd", "--seed", "1"], "crd": ["--distill", "crd", "--nce_k", "32", "--seed", "3"]}
# (method, kill point): every point for KD; for CRD, a kill mid-epoch (memory bank replay) and inside a copy.
CASES = [("kd", "step"), ("kd", "last"), ("kd", "best"), ("kd", "ckpt_epoch"), ("crd", "step"), ("crd", "best")]


def student_args(root, teacher, method):
    return ["--path_t", teacher, "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "128",
            "--test_subset", "64", "--batch_size", "32", "--epochs", str(EPOCHS), "--save_freq", "1",
            "--lr_decay_epochs", "100", "--device", "cpu", "--num_workers", "0", "--no_progress",
            "--model_path", str(root / "student"), "--tb_path", str(root / "tb"), *METHODS[method]]


def run_worker(args, kill=None):
    """tests/kill_worker.py student ARGS, killed at `kill` (e.g. 'best@2') when given."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # tiny models: one thread, no oversubscription
    env.pop("KD_TEST_KILL", None)
    if kill:
        env["KD_TEST_KILL"] = kill
    return subprocess.run([sys.executable, WORKER, "student", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def run_folder(root):
    (folder,) = (root / "student").iterdir()
    return folder


def records(folder):
    return [json.loads(line) for line in open(folder / "log.jsonl")]


def checkpoints(folder):
    """The checkpoint files under their final names (pathlib's glob also matches the hidden temporaries)."""
    return sorted(f for f in folder.glob("*.pth") if not f.name.startswith("."))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher):
    """The uninterrupted run of each method (run once, on first use): its run folder."""
    done = {}

    def get(method):
        if method not in done:
            root = tmp_path_factory.mktemp(f"whole_{method}")
            result = run_worker(student_args(root, teacher, method))
            assert result.returncode == 0, result.stderr
            done[method] = run_folder(root)
        return done[method]
    return get


def kill_point(point, whole):
    """KD_TEST_KILL for `point`: mid-epoch 2; the last.pth write of epoch 2; the best.pth copy of the run's final
    best epoch (so no later epoch rewrites it); the last epoch's ckpt_epoch copy (resume then has no epoch left)."""
    best_epoch = json.load(open(whole / "results.json"))["best_epoch"]
    assert best_epoch >= 2, "pick a --seed in METHODS whose best epoch is not the first"
    return {"step": f"step@{STEPS_PER_EPOCH + 2}", "last": "last@2", "best": f"best@{best_epoch}",
            "ckpt_epoch": f"ckpt_epoch@{EPOCHS}"}[point]


def tensorboard_steps(root, tag="test_acc"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (folder,) = (root / "tb").iterdir()
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def assert_same_folder(resumed, whole):
    """log.jsonl holds each epoch once, with the uninterrupted run's values; every checkpoint equals the uninterrupted
    run's (epoch, accuracy, weights, method state); best.pth is the recorded best epoch; no temporary is left."""
    log_a, log_b = records(resumed), records(whole)
    assert [r["step"] for r in log_a] == list(range(1, EPOCHS + 1))
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in log_a] == \
           [{k: v for k, v in r.items() if k not in TIMING} for r in log_b]
    names = [f.name for f in checkpoints(resumed)]
    assert names == [f.name for f in checkpoints(whole)]
    for name in names:
        a, b = load(resumed / name), load(whole / name)
        assert (a["epoch"], a["accuracy"], a["best_epoch"]) == (b["epoch"], b["accuracy"], b["best_epoch"]), name
        for part in ("model", "distiller"):
            for key, value in b[part].items():
                assert torch.equal(a[part][key], value), (name, part, key)
    results = json.load(open(resumed / "results.json"))
    accuracies = [r["test_acc"] for r in log_a]
    assert load(resumed / "resnet8_best.pth")["epoch"] == results["best_epoch"] == accuracies.index(max(accuracies)) + 1
    assert results.get("status") == "finished" and results["last_epoch"] == EPOCHS
    assert not [f.name for f in resumed.iterdir() if f.name.startswith(".tmp-")]


@pytest.mark.parametrize("method,point", CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_run(tmp_path, teacher, reference, method, point):
    whole = reference(method)
    args = student_args(tmp_path, teacher, method)
    kill = kill_point(point, whole)
    killed = run_worker(args, kill=kill)
    assert killed.returncode == -signal.SIGKILL, f"{kill} was not reached: {killed.stderr[-2000:]}"
    folder = run_folder(tmp_path)
    if point != "step":
        assert list(folder.glob(".tmp-*.pth")), "the kill left a partial temporary (the case the start-up cleans)"
    for path in checkpoints(folder):
        load(path)  # whatever the kill, every checkpoint under its final name is whole
    resumed = run_worker(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_folder(folder, whole)
    assert tensorboard_steps(tmp_path) == list(range(1, EPOCHS + 1))
