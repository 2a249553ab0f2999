"""train_teacher.py end to end on real Fashion-MNIST images (a subset, CPU)."""
import json
import os

import pytest
import torch

import train_teacher
from helper.errors import UserError

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")


def teacher_args(tmp_path, *extra):
    return ["--dataset", "fashion_mnist", "--model", "resnet8", "--subset", "3000", "--test_subset", "1000",
            "--batch_size", "64", "--num_workers", "0", "--device", "cpu", "--lr_decay_epochs", "100", "--save_freq", "1",
            "--model_path", str(tmp_path / "models"), "--tb_path", str(tmp_path / "tb"), "--seed", "1", *extra]


def run_folder(tmp_path):
    return tmp_path / "models" / "resnet8_fashion_mnist_lr_0.05_decay_0.0005_trial_0"


@needs_fmnist
def test_teacher_learns_writes_checkpoints_and_resumes_exactly(tmp_path):
    state = train_teacher.main(teacher_args(tmp_path, "--epochs", "3"))
    folder = run_folder(tmp_path)
    # It learns: the training loss falls and the training accuracy climbs well above chance (10 %) over the epochs.
    # Test accuracy after 3 epochs at lr 0.05 swings (32 %, 39 %, then 10 % on one CPU), so it only has to beat
    # chance by a margin once.
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"], records
    assert records[-1]["train_acc"] > 40.0 and records[-1]["train_acc"] > records[0]["train_acc"] + 10, records
    assert state.best_acc > 20.0
    for name in ("resnet8_best.pth", "resnet8_last.pth", "ckpt_epoch_1.pth", "ckpt_epoch_3.pth",
                 "options.json", "log.jsonl", "results.json"):
        assert (folder / name).is_file(), name
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]
    last = torch.load(folder / "resnet8_last.pth", weights_only=True)
    assert last["arch"] == "resnet8" and last["num_classes"] == 10 and last["epoch"] == 3
    assert last["opt"]["learning_rate"] == 0.05 and last["opt"]["lr_decay_epochs"] == [100]
    assert last["optimizer"]["state"], "momentum buffers are saved"

    # An uninterrupted 4-epoch run and a 3-epoch run resumed for a 4th end with the same weights.
    train_teacher.main(teacher_args(tmp_path, "--epochs", "4", "--resume"))
    resumed = torch.load(folder / "resnet8_last.pth", weights_only=True)
    epochs = [json.loads(line)["step"] for line in open(folder / "log.jsonl")]
    assert epochs == [1, 2, 3, 4]
    fresh_root = tmp_path / "fresh"
    train_teacher.main(teacher_args(fresh_root, "--epochs", "4"))
    fresh = torch.load(run_folder(fresh_root) / "resnet8_last.pth", weights_only=True)
    assert resumed["epoch"] == fresh["epoch"] == 4
    for key, value in fresh["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)


def test_unknown_model_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="unknown --model 'resnet9'"):
        train_teacher.main(teacher_args(tmp_path, "--model", "resnet9"))


@needs_fmnist
def test_resume_from_a_checkpoint_of_another_architecture_fails_clearly(tmp_path):
    train_teacher.main(teacher_args(tmp_path, "--epochs", "1", "--subset", "256"))
    other = str(run_folder(tmp_path) / "resnet8_last.pth")
    with pytest.raises(UserError, match="holds a 'resnet8' model but this run trains 'resnet14'"):
        train_teacher.main(teacher_args(tmp_path, "--model", "resnet14", "--epochs", "2", "--resume", other))


@needs_fmnist
def test_fast_path_flags_train_and_keep_checkpoint_keys(tmp_path):
    state = train_teacher.main(teacher_args(tmp_path, "--epochs", "1", "--subset", "512", "--amp", "bf16",
                                            "--channels_last", "--gpu_loader"))
    assert state.best_acc > 0
    ckpt = torch.load(run_folder(tmp_path) / "resnet8_last.pth", weights_only=True)
    assert ckpt["opt"]["amp"] == "bf16" and ckpt["opt"]["channels_last"] is True
    assert all(v.dtype == torch.float32 for k, v in ckpt["model"].items() if v.is_floating_point())
    from models import build_model
    assert list(ckpt["model"]) == list(build_model("resnet8", 10).state_dict())


@needs_fmnist
def test_resume_with_another_global_batch_needs_allow_batch_change(tmp_path):
    train_teacher.main(teacher_args(tmp_path, "--epochs", "1", "--subset", "256"))
    message = r"global batch of 64 \(1 process\(es\) x --batch_size 64\) but this run's is 32 .*--batch_size 64 to keep"
    with pytest.raises(UserError, match=message):
        train_teacher.main(teacher_args(tmp_path, "--epochs", "2", "--subset", "256", "--resume", "--batch_size", "32"))
    state = train_teacher.main(teacher_args(tmp_path, "--epochs", "2", "--subset", "256", "--resume",
                                            "--batch_size", "32", "--allow_batch_change"))
    assert state.start_epoch == 2
    last = torch.load(run_folder(tmp_path) / "resnet8_last.pth", weights_only=True)
    assert last["epoch"] == 2 and last["opt"]["batch_size"] == 32
