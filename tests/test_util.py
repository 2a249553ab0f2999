import os

import pytest
import torch

from helper.errors import UserError
from helper.engine.meters import accuracy
from helper.runs.files import extract_state_dict, load_checkpoint, load_weights, save_atomic
from helper.engine.lr import parse_decay_epochs, step_lr, cosine_lr


def test_step_lr_matches_repdistiller_milestones():
    decay = [150, 180, 210]
    assert step_lr(1, 0.05, decay, 0.1) == 0.05
    assert step_lr(150, 0.05, decay, 0.1) == 0.05          # milestone epoch itself still uses the old lr
    assert step_lr(151, 0.05, decay, 0.1) == pytest.approx(0.005)
    assert step_lr(181, 0.05, decay, 0.1) == pytest.approx(0.0005)
    assert step_lr(240, 0.05, decay, 0.1) == pytest.approx(0.00005)


def test_cosine_lr_starts_at_base_and_decays():
    assert cosine_lr(1, 0.1, 100) == pytest.approx(0.1)
    assert cosine_lr(51, 0.1, 100) == pytest.approx(0.05)
    assert cosine_lr(100, 0.1, 100) < 0.001


def test_parse_decay_epochs_rejects_garbage_naming_the_flag():
    assert parse_decay_epochs("30,60,90") == [30, 60, 90]
    with pytest.raises(UserError, match="--lr_decay_epochs"):
        parse_decay_epochs("30,sixty")


def test_accuracy_top1_top5():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0, 0, 0], [0.8, 0.1, 0.05, 0.02, 0.02, 0.01]])
    targets = torch.tensor([1, 5])
    top1, top5 = accuracy(logits, targets, topk=(1, 5))
    assert top1.item() == pytest.approx(50.0)
    assert top5.item() == pytest.approx(50.0)  # class 5 has the smallest score in row 2


def test_save_atomic_leaves_no_temporary_files_and_loads_weights_only(tmp_path):
    path = tmp_path / "run" / "ckpt.pth"
    save_atomic({"model": {"w": torch.ones(2)}, "epoch": 3, "opt": {"lr": 0.1}}, str(path))
    assert os.listdir(path.parent) == ["ckpt.pth"]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))


def test_save_atomic_keeps_previous_file_when_saving_fails(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    save_atomic({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_extract_state_dict_accepts_repdistiller_torchvision_and_ddp_files():
    sd = {"fc.weight": torch.zeros(2, 2)}
    assert extract_state_dict({"model": sd, "epoch": 240}) is sd
    assert extract_state_dict(sd) is sd
    assert list(extract_state_dict({"module.fc.weight": torch.zeros(2, 2)})) == ["fc.weight"]
    with pytest.raises(UserError, match="no state_dict"):
        extract_state_dict({"epoch": 3})


def test_load_weights_names_mismatching_keys_in_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    bad = dict(model.state_dict())
    bad["1.weight"] = torch.zeros(5, 4)
    del bad["1.bias"]
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        load_weights(model, bad, "t.pth", "mlp")
    msg = str(err.value)
    assert "\n" not in msg
    assert "1.bias" in msg and "extra.weight" in msg and "1.weight (5, 4) vs (2, 4)" in msg


def test_load_checkpoint_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pth"))


def test_copy_atomic_duplicates_a_checkpoint_without_temporary_files(tmp_path):
    from helper.runs.files import copy_atomic
    src = str(tmp_path / "last.pth")
    save_atomic({"epoch": 7}, src)
    copy_atomic(src, str(tmp_path / "best.pth"))
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == 7
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]


@pytest.mark.parametrize("saved_world, world, batch, outcome", [
    (2, 1, 64, "--batch_size 128 to keep"),      # half the processes: double the per-process batch
    (2, 4, 64, "--batch_size 32 to keep"),
    (4, 3, 64, "4 processes to keep"),           # 256 is not a multiple of 3 processes
    (2, 1, 128, "warn"), (2, 4, 32, "warn"),     # same global batch on another process count
    (2, 2, 64, "silent"), (1, 1, 64, "silent")])
def test_resume_keeps_the_global_batch_across_process_counts(saved_world, world, batch, outcome, caplog):
    from argparse import Namespace

    from helper.runs.resume import check_global_batch
    saved = {"batch_size": 64, "world_size": saved_world}
    opt = Namespace(batch_size=batch, world_size=world, allow_batch_change=False)
    if outcome not in ("warn", "silent"):
        with pytest.raises(UserError, match=f"global batch of {64 * saved_world} .*{outcome}.*--allow_batch_change"):
            check_global_batch(saved, opt, "ckpt.pth")
        opt.allow_batch_change = True
    with caplog.at_level("WARNING", logger="kd"):
        check_global_batch(saved, opt, "ckpt.pth")
    assert bool(caplog.records) == (outcome != "silent")
