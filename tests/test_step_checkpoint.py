"""A stop signal (SIGUSR2 from the scheduler, SIGTERM) in the middle of an epoch: the run finishes the step, writes
a step checkpoint and exits; --resume continues at the next step and ends bit-identical to the run that was not
stopped (weights, method state, log.jsonl values). Fashion-MNIST subsets on the CPU, in process."""
import json
import os
import signal

import pytest
import torch

import train_student
import train_teacher
from helper.engine.trainee import Trainee
from helper.errors import Preempted
from helper.options import run_cli
from tests.test_reliability import needs_fmnist, only_folder, student_args, teacher_args

pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]
EPOCHS = ["--epochs", "2"]  # 4 steps per epoch (128 images, batch 32): 8 steps in all
TIME_KEYS = {"time", "epoch_time", "test_time", "images_per_s", "eta_s"}  # wall-clock figures, never equal twice


@pytest.fixture
def signal_after_step(monkeypatch):
    """signal_after_step(n, signum): the process sends itself `signum` once the n-th training step (1-based, over
    every trainee of the process) has run."""
    plan = {}
    real_step = Trainee.step

    def step(self, batch, teachers, iteration):
        real_step(self, batch, teachers, iteration)
        plan["done"] = plan.get("done", 0) + 1
        if plan["done"] == plan.get("at"):
            os.kill(os.getpid(), plan["signum"])

    monkeypatch.setattr(Trainee, "step", step)

    def arm(n, signum=signal.SIGUSR2):
        plan.update(done=0, at=n, signum=signum)
    return arm


def folders(root, kind):
    return sorted((root / kind).iterdir())


def weights_of(folder):
    """The tensors of every checkpoint state that training changes: the network, the method (memory banks), the
    optimizer's momenta."""
    (last,) = folder.glob("*_last.pth")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    tensors = {f"model.{k}": v for k, v in ckpt["model"].items()}
    tensors.update({f"distiller.{k}": v for k, v in ckpt.get("distiller", {}).items()})
    for i, state in ckpt["optimizer"]["state"].items():
        tensors.update({f"momentum.{i}": state["momentum_buffer"]} if "momentum_buffer" in state else {})
    return tensors


def log_values(folder):
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def assert_same_run(stopped, reference):
    a, b = weights_of(stopped), weights_of(reference)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert log_values(stopped) == log_values(reference)
    assert not list(stopped.glob("*_step.pth")), "the epoch's end drops the step checkpoint"


def stop_then_resume(args, arm, at, main=train_student.main, signum=signal.SIGUSR2):
    arm(at, signum)
    with pytest.raises(Preempted) as stopped:
        main(args)
    arm(None)
    main(args + ["--resume"])
    return str(stopped.value)


@pytest.mark.parametrize("at", [1, 2, 4, 5, 7])  # first step, mid-epoch, the epoch's last step, epoch 2
def test_a_kd_student_stopped_at_any_step_resumes_bit_identical(tmp_path, teacher, signal_after_step, at):
    reference = student_args(tmp_path / "ref", teacher, "--distill", "kd", *EPOCHS)
    train_student.main(reference)
    message = stop_then_resume(student_args(tmp_path / "stop", teacher, "--distill", "kd", *EPOCHS),
                               signal_after_step, at)
    assert "SIGUSR2" in message
    assert ("end of epoch 1" in message) if at == 4 else (f"step {at % 4}" in message and "_step.pth" in message)
    assert_same_run(only_folder(tmp_path / "stop"), only_folder(tmp_path / "ref"))


@pytest.mark.parametrize("at", [3, 6])
def test_a_crd_student_keeps_its_memory_bank_and_negatives_across_a_stop(tmp_path, teacher, signal_after_step, at):
    crd = ["--distill", "crd", "--nce_k", "32", *EPOCHS]
    train_student.main(student_args(tmp_path / "ref", teacher, *crd))
    stop_then_resume(student_args(tmp_path / "stop", teacher, *crd), signal_after_step, at, signum=signal.SIGTERM)
    assert_same_run(only_folder(tmp_path / "stop"), only_folder(tmp_path / "ref"))


def test_a_group_stopped_mid_epoch_resumes_every_student_bit_identical(tmp_path, teacher, signal_after_step):
    group = ["--distill", "kd,crd", "-a", "1", "--nce_k", "32", "--have_mlp", "1", *EPOCHS]  # CTKD: epoch meters
    train_student.main(student_args(tmp_path / "ref", teacher, *group))
    stop_then_resume(student_args(tmp_path / "stop", teacher, *group), signal_after_step, 5)  # 2 trainees per step
    for stopped, reference in zip(folders(tmp_path / "stop", "student"), folders(tmp_path / "ref", "student")):
        assert_same_run(stopped, reference)


def test_a_teacher_stopped_twice_in_one_epoch_resumes_bit_identical(tmp_path, signal_after_step):
    train_teacher.main(teacher_args(tmp_path / "ref", *EPOCHS))
    args = teacher_args(tmp_path / "stop", *EPOCHS)
    signal_after_step(2)
    with pytest.raises(Preempted):
        train_teacher.main(args)
    signal_after_step(1)  # the second stop comes one step after the resumed one: epoch 1, step 3
    with pytest.raises(Preempted, match="step 3"):
        train_teacher.main(args + ["--resume"])
    signal_after_step(None)
    train_teacher.main(args + ["--resume"])
    assert_same_run(only_folder(tmp_path / "stop", "models"), only_folder(tmp_path / "ref", "models"))


def test_the_stop_is_one_line_with_the_resume_command_and_exit_code_128_plus_the_signal(tmp_path, teacher, capsys,
                                                                                      signal_after_step, monkeypatch):
    args = student_args(tmp_path, teacher, "--distill", "kd", *EPOCHS)
    monkeypatch.setattr("sys.argv", ["train_student.py", *args])
    signal_after_step(3)
    with pytest.raises(SystemExit) as end:
        run_cli(train_student.main)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert end.value.code == 128 + signal.SIGUSR2
    assert line.startswith("error: stopped by SIGUSR2 in epoch 1 after step 3") and line.endswith("--resume"), line
    assert list(only_folder(tmp_path).glob("resnet8_step.pth"))


def test_an_init_stage_stopped_starts_over_and_ends_bit_identical(tmp_path, teacher, signal_after_step):
    fsp = ["--distill", "fsp", "--init_epochs", "1", *EPOCHS]
    train_student.main(student_args(tmp_path / "ref", teacher, *fsp))
    args = student_args(tmp_path / "stop", teacher, *fsp)
    signal_after_step(2)
    with pytest.raises(Preempted, match="init stage.*starts it over"):
        train_student.main(args)
    signal_after_step(None)
    train_student.main(args + ["--resume"])  # nothing was written but options.json: the run replays from its seed
    assert json.load(open(only_folder(tmp_path / "stop") / "results.json"))["status"] == "finished"
    assert_same_run(only_folder(tmp_path / "stop"), only_folder(tmp_path / "ref"))
