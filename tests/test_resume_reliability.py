"""Resume, interruption and full-disk reliability: a resume keeps the flags that define its run and refuses, before
writing anything, what would not fit; a damaged or out-of-range checkpoint is one line; a run killed before its first
checkpoint resumes; the first evaluated epoch is the best so far even at 0%; a full disk, Ctrl-C and a run-folder
file that is a directory end with one line saying what is kept and how to continue. Fashion-MNIST subsets, CPU."""
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import train_student
import helper.session.teacher
import train_teacher
from helper.runs import files as run_files
from helper.errors import UserError
from helper.options import run_cli
from tests.test_reliability import (ENV, ROOT, assert_error_line, assert_one_line, cli, needs_fmnist, only_folder,
                                    snapshot, steps, student_args, teacher_args, wait_until_stopped)

pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]
CRD = ["--distill", "crd", "--nce_k", "32"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def results(folder):
    return json.load(open(folder / "results.json"))


def worker(kind, args, kill, signal_name="KILL"):
    """tests/kill_worker.py `kind` ARGS, stopped at `kill` (e.g. 'last@1'); a Popen when it stops (SIGSTOP)."""
    env = dict(ENV, KD_TEST_KILL=kill, KD_TEST_SIGNAL=signal_name)
    command = [sys.executable, "tests/kill_worker.py", kind, *args]
    if signal_name == "STOP":
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def run_cli_in_process(capsys, args):
    """train_teacher through run_cli in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: train_teacher.main(args))
    return exit_.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def crd_run(tmp_path_factory, teacher):
    """A finished one-epoch CRD run (its memory bank sized by --subset 128): (its root, its folder)."""
    root = tmp_path_factory.mktemp("crd")
    train_student.main(student_args(root, teacher, *CRD))
    return root, only_folder(root)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, teacher):
    """A finished one-epoch KD run (--seed 0 from --trial 0, lr 0.05): (its root, its folder)."""
    root = tmp_path_factory.mktemp("kd")
    train_student.main(student_args(root, teacher, "--distill", "kd"))
    return root, only_folder(root)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished one-epoch teacher run: (its root, its folder)."""
    root = tmp_path_factory.mktemp("teacher")
    train_teacher.main(teacher_args(root))
    return root, only_folder(root, "models")


# ---- 1-3: a resume keeps the flags that define its run, and a refused start writes nothing -------------------------
def test_resuming_a_crd_run_with_another_subset_is_one_line_naming_the_flag(teacher, crd_run):
    root, folder = crd_run
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_student.main(student_args(root, teacher, *CRD, "--subset", "64", "--epochs", "2", "--resume"))
    assert_one_line(err, "--subset 128", "--subset 64")
    assert snapshot(folder) == before


def test_a_resume_refused_while_restoring_its_state_writes_nothing(tmp_path, teacher, crd_run):
    root, folder = crd_run
    ckpt = load(folder / "resnet8_last.pth")
    ckpt["distiller"]["criterion.contrast.memory_v1"] = torch.zeros(3, 3)  # a bank that fits no run
    mismatched = tmp_path / "mismatched.pth"
    torch.save(ckpt, mismatched)
    (folder / ".tmp-left-by-a-kill.pth").write_bytes(b"half a checkpoint")
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_student.main(student_args(root, teacher, *CRD, "--epochs", "2", "--resume", str(mismatched)))
    assert_one_line(err, f"--resume {mismatched} does not fit this run", "memory_v1")
    assert snapshot(folder) == before
    os.remove(folder / ".tmp-left-by-a-kill.pth")


@pytest.mark.parametrize("flag,before,after", [("--seed", "0", "9"), ("--learning_rate", "0.05", "0.01")])
def test_resuming_with_another_seed_or_learning_rate_is_refused_naming_both_values(teacher, kd_run, flag, before,
                                                                                    after):
    root, folder = kd_run
    files = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_student.main(student_args(root, teacher, "--distill", "kd", "--epochs", "2", "--resume", flag, after))
    assert_one_line(err, f"{flag} {before}", f"{flag} {after}", "--trial")
    assert snapshot(folder) == files


def test_a_teacher_resumed_with_another_seed_is_refused(teacher_run):
    root, folder = teacher_run
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(root, "--epochs", "2", "--resume", "--seed", "5"))
    assert_one_line(err, "--seed 0", "--seed 5")


def test_a_cosine_run_resumes_with_more_epochs_only_while_its_trained_epochs_keep_their_lr(tmp_path):
    """Cosine lr at the start of epoch e is lr * (1 + cos(pi (e - 1) / E)) / 2: epoch 1's is lr whatever E, epoch 2's
    is not; so a 1-epoch run may grow to 2 epochs (the headline tests resume CKD's cosine recipe so), a 2-epoch run
    may not grow to 3."""
    train_teacher.main(teacher_args(tmp_path, "--lr_schedule", "cosine"))
    train_teacher.main(teacher_args(tmp_path, "--lr_schedule", "cosine", "--epochs", "2", "--resume"))
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(tmp_path, "--lr_schedule", "cosine", "--epochs", "3",
                                        "--resume"))
    assert_one_line(err, "--epochs 2", "--epochs 3", "trained epoch 2", "--lr_schedule cosine")


# ---- 4-5: a damaged or out-of-range checkpoint is one line ----------------------------------------------------------
def edited_checkpoint(folder, tmp_path, **changes):
    ckpt = load(folder / "resnet8_last.pth")
    ckpt.update(changes)
    path = tmp_path / "edited.pth"
    torch.save(ckpt, path)
    return path


def test_a_resume_checkpoint_whose_epoch_is_not_a_number_is_damaged(tmp_path, teacher_run):
    root, folder = teacher_run
    path = edited_checkpoint(folder, tmp_path, epoch="1")
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(root, "--epochs", "2", "--resume", str(path)))
    assert_one_line(err, f"--resume {path} is damaged", "'epoch'")
    assert snapshot(folder) == before


def test_a_resume_checkpoint_beyond_the_last_epoch_is_refused(tmp_path, teacher_run):
    root, folder = teacher_run
    path = edited_checkpoint(folder, tmp_path, epoch=1000000)
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(root, "--resume", str(path)))
    assert_one_line(err, "epoch 1000000", "--epochs 1")
    assert snapshot(folder) == before


def test_a_resume_that_would_end_before_the_folders_last_epoch_is_refused(tmp_path):
    args = teacher_args(tmp_path, "--epochs", "4", "--save_freq", "1")
    train_teacher.main(args)
    folder = only_folder(tmp_path, "models")
    before = snapshot(folder)
    third = str(folder / "ckpt_epoch_3.pth")
    with pytest.raises(UserError) as err:
        train_teacher.main(args + ["--epochs", "3", "--resume", third])
    assert_one_line(err, "--epochs 3", "epoch 4", "resnet8_last.pth")
    assert snapshot(folder) == before
    train_teacher.main(args + ["--resume", third])  # replaying up to epoch 4 keeps every file consistent
    done = results(folder)
    assert (done["last_epoch"], load(folder / "resnet8_last.pth")["epoch"]) == (4, 4)
    assert load(folder / "resnet8_best.pth")["epoch"] == done["best_epoch"]


# ---- 6: a kill during the first checkpoint write leaves a folder that --resume starts -------------------------------
def test_a_run_killed_in_its_first_checkpoint_write_resumes_from_epoch_1(tmp_path):
    args = teacher_args(tmp_path)
    killed = worker("teacher", args, "last@1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    folder = only_folder(tmp_path, "models")
    assert not [f for f in folder.glob("*.pth") if not f.name.startswith(".")] and steps(folder) == [1]
    code, stderr = cli("train_teacher.py", *args, "--resume")
    assert code == 0, stderr[-3000:]
    assert "no checkpoint yet" in stderr and "starting at epoch 1" in stderr
    assert steps(folder) == [1] and results(folder)["last_epoch"] == 1
    assert load(folder / "resnet8_last.pth")["epoch"] == 1
    assert not [f.name for f in folder.iterdir() if f.name.startswith(".tmp-")]


def test_a_resume_in_a_folder_that_never_held_a_run_is_still_refused(tmp_path):
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(tmp_path, "--resume"))
    assert_one_line(err, "no checkpoint", "run without --resume")


# ---- 7: the first evaluated epoch is the best so far ----------------------------------------------------------------
def test_a_run_whose_accuracy_is_zero_still_has_a_best_epoch(tmp_path, monkeypatch):
    import helper.engine.trainee
    monkeypatch.setattr(helper.engine.trainee, "validate", lambda *args: (0.0, 0.0, 2.3))
    state = train_teacher.main(teacher_args(tmp_path))
    folder = only_folder(tmp_path, "models")
    assert (state.best_acc, state.best_epoch) == (0.0, 1)
    assert results(folder)["best_epoch"] == 1 and load(folder / "resnet8_best.pth")["epoch"] == 1


# ---- 8-9: a full disk and Ctrl-C end with one line: what is kept, and --resume ---------------------------------------
def test_a_full_disk_is_one_line_saying_what_is_kept_and_that_resume_continues(tmp_path, monkeypatch, capsys):
    real_write, written = run_files._write_atomic, []

    def write_atomic(path, write):
        if path.endswith("_last.pth"):
            written.append(path)
            if len(written) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, write)

    monkeypatch.setattr(run_files, "_write_atomic", write_atomic)
    args = teacher_args(tmp_path, "--epochs", "2")
    code, stderr = run_cli_in_process(capsys, args)
    assert_error_line(code, stderr, 2, "disk", "full", "resnet8_last.pth, epoch 1", "is kept", "--resume")
    monkeypatch.setattr(run_files, "_write_atomic", real_write)
    train_teacher.main(args + ["--resume"])
    assert steps(only_folder(tmp_path, "models")) == [1, 2]


def test_ctrl_c_is_one_line_saying_what_is_kept_and_the_resume_command(tmp_path):
    args = teacher_args(tmp_path, "--epochs", "2")
    first = worker("teacher", args, "step@6", signal_name="STOP")  # 4 steps per epoch: stopped in epoch 2
    try:
        wait_until_stopped(first)
        os.kill(first.pid, signal.SIGINT)
        os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_error_line(first.returncode, stderr, 130, "interrupted", "resnet8_last.pth, epoch 1", "is kept",
                      "tests/kill_worker.py teacher", "--resume")
    code, stderr = cli("train_teacher.py", *args, "--resume")
    assert code == 0, stderr[-3000:]
    assert steps(only_folder(tmp_path, "models")) == [1, 2]


def test_ctrl_c_before_training_says_to_rerun_the_command(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(helper.session.teacher, "build_loaders", interrupted)
    code, stderr = run_cli_in_process(capsys, teacher_args(tmp_path))
    assert_error_line(code, stderr, 130, "interrupted (Ctrl-C)", "no training epoch was in progress", "rerun")


def test_a_full_disk_outside_the_epochs_is_one_line(tmp_path, monkeypatch, capsys):
    def disk_full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(run_files, "_write_atomic", disk_full)  # the first write: options.json
    code, stderr = run_cli_in_process(capsys, teacher_args(tmp_path))
    assert_error_line(code, stderr, 2, "no space left", "options.json", "free some space")


# ---- 10: a run-folder file that is a directory ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["results.json", "log.jsonl", ".lock", "options.json", "train.log"])
def test_a_run_folder_file_that_is_a_directory_is_one_line_naming_it(tmp_path, name):
    folder = tmp_path / "models" / "resnet8_fashion_mnist_lr_0.05_decay_0.0005_trial_0"
    (folder / name).mkdir(parents=True)
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(tmp_path))
    assert_one_line(err, str(folder / name), "is a directory")


def test_resume_drops_damaged_log_lines_and_keeps_the_others(tmp_path):
    """A log.jsonl line that is not UTF-8, not a record, or has a step that is not a number does not stop --resume."""
    train_teacher.main(teacher_args(tmp_path))
    folder = only_folder(tmp_path, "models")
    with open(folder / "log.jsonl", "ab") as f:
        f.write(b'{"kind": "epoch", "step": "\xff"}\n[1, 2]\n{"kind": "epoch", "step": "2"}\n')
    train_teacher.main(teacher_args(tmp_path, "--epochs", "2", "--resume"))
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2]


def test_a_refused_resume_leaves_no_empty_run_or_tensorboard_folder(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train_teacher.main(teacher_args(tmp_path, "--resume"))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert not (tmp_path / "tb").exists() or not any((tmp_path / "tb").iterdir())
