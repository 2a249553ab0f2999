"""Plug-ins composed with methods end to end (CTKD + LS + DKD, DOT + KD, DOT + CRD), refused where nothing consumes
them; fp16 with its gradient scaler; MLKD's two views on both loaders; SimKD's teacher head. Fashion-MNIST, CPU."""
import json

import numpy as np
import pytest
import torch

import train_student
from dataset import build_loaders
from distiller_zoo.base import distiller_registry
from helper.student.build import probe_shapes
from helper.errors import UserError
from helper.engine.loop import validate
from models import build_model
from tests.student_utils import parse
from tests.test_group import FMNIST, assert_same_run, common, folders, records, started_name

pytestmark = pytest.mark.skipif(not __import__("os").path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")


def split_and_whole(tmp_path, teacher, args):
    """The run for 1 epoch then --resume to 2, and the uninterrupted 2-epoch run: (split folder, whole folder)."""
    train_student.main(common(tmp_path / "split", teacher, epochs=1) + args)
    train_student.main(common(tmp_path / "split", teacher, epochs=2) + args + ["--resume"])
    train_student.main(common(tmp_path / "whole", teacher, epochs=2) + args)
    (split,), (whole,) = folders(tmp_path / "split"), folders(tmp_path / "whole")
    assert split.name == started_name(whole.name)
    return split, whole


PLUGGED = {
    "ctkd-ls-dkd": ["--distill", "dkd", "--have_mlp", "1", "--logit_stand", "--decay_loops", "2", "--warmup", "2"],
    "dot-kd": ["--distill", "kd", "--dot"],
    "dot-crd": ["--distill", "crd", "--nce_k", "32", "-a", "1", "--dot"],
}


@pytest.mark.parametrize("name", sorted(PLUGGED))
def test_plugins_compose_with_methods_and_resume_exactly(tmp_path, teacher, name):
    split, whole = split_and_whole(tmp_path, teacher, PLUGGED[name])
    assert_same_run(split, whole)
    last = torch.load(whole / "resnet8_last.pth", weights_only=True)
    if name.startswith("dot"):
        assert "+dot_" in whole.name
        state = next(iter(last["optimizer"]["state"].values()))
        assert {"momentum_buffer", "momentum_kd_buffer"} <= set(state)
        assert last["optimizer"]["param_groups"][0]["momentum_kd"] == pytest.approx(0.975)
    else:
        assert "+ctkd=global+ls_" in whole.name and "temperature" in last
        assert all("temp_mean" in r for r in records(whole))


@pytest.mark.parametrize("args, switch", [(["--distill", "attention", "-a", "0", "--have_mlp", "1"], "--have_mlp 1"),
                                          (["--distill", "crd", "-a", "0", "--logit_stand"], "--logit_stand")])
def test_a_plugin_no_term_reads_is_refused_at_start_up(tmp_path, teacher, args, switch):
    with pytest.raises(UserError) as err:
        train_student.main(common(tmp_path, teacher) + args)
    assert str(err.value).startswith(switch) and "\n" not in str(err.value)
    assert not (tmp_path / "student").exists()


def test_dot_is_refused_with_fp16(tmp_path, teacher):
    with pytest.raises(UserError, match="--dot with --amp fp16"):
        train_student.main(common(tmp_path, teacher) + ["--distill", "kd", "--dot", "--amp", "fp16"])


# --- fp16 with a gradient scaler ------------------------------------------------------------------------------------

def test_fp16_resumes_exactly_with_its_scaler_state(tmp_path, teacher):
    split, whole = split_and_whole(tmp_path, teacher, ["--distill", "kd", "--amp", "fp16"])
    assert_same_run(split, whole)
    last = torch.load(whole / "resnet8_last.pth", weights_only=True)
    assert last["scaler"]["scale"] > 0 and all("fp16_skipped_steps" in r for r in records(whole))


# 10 fp16 KD steps against fp32 on the same batches (resnet20 -> resnet8, batch 16, lr 0.05). Observed here: loss
# rel. difference <= 1.5e-3 per step, whole-update rel. difference 1.1e-2.
FP16_LOSS_RTOL = 1e-2
FP16_UPDATE_RTOL = 5e-2


def test_fp16_tracks_fp32_over_ten_kd_steps():
    from tests.test_fast import Run, gpu_batches, make_opt, trained_keys
    fp32 = Run(make_opt("kd", "-r", "0.1", "-a", "0.9", "--batch_size", "16"))
    start = fp32.parameters()
    fp16 = fp32.fast(amp="fp16")
    fp16.s.scaler = torch.amp.GradScaler("cpu")
    fp16.s.trainee.scaler = fp16.s.scaler
    batches = gpu_batches(fp32.distiller.needs, 10)
    loss_fp32, loss_fp16 = fp32.train(batches)[0], fp16.train(batches)[0]
    assert all(np.isfinite(loss_fp16))
    np.testing.assert_allclose(loss_fp16, loss_fp32, rtol=FP16_LOSS_RTOL)
    after_fp32, after_fp16 = fp32.parameters(), fp16.parameters()
    trained = trained_keys(start, after_fp32)
    delta_fp32 = torch.cat([(after_fp32[k] - start[k]).flatten() for k in trained])
    delta_fp16 = torch.cat([(after_fp16[k] - start[k]).flatten() for k in trained])
    assert ((delta_fp16 - delta_fp32).norm() / delta_fp32.norm()).item() < FP16_UPDATE_RTOL
    assert all(after_fp16[k].dtype == torch.float32 for k in trained)


# --- MLKD's two views, SimKD's head -----------------------------------------------------------------------------------

@pytest.mark.parametrize("loader", ["device", "torch"])
def test_mlkd_trains_on_two_views_of_every_image_and_resumes_exactly(tmp_path, teacher, loader):
    split, whole = split_and_whole(tmp_path, teacher, ["--distill", "mlkd", "--loader", loader])
    assert_same_run(split, whole)
    terms = {k for k in records(whole)[0] if k.startswith("train_loss_")}
    assert {"train_loss_cls", "train_loss_cls_strong", "train_loss_mlkd_kd", "train_loss_mlkd_cc",
            "train_loss_mlkd_bc"} <= terms


def test_simkd_reports_and_saves_the_accuracy_of_its_projector_and_teacher_head(tmp_path, teacher):
    train_student.main(common(tmp_path, teacher) + ["--distill", "simkd"])
    (folder,) = folders(tmp_path)
    last = torch.load(folder / "resnet8_last.pth", weights_only=True)
    assert last["eval_head"] == "simkd" and any(k.startswith("cls_t.") for k in last["distiller"])
    logged = records(folder)[-1]["test_acc"]
    assert last["accuracy"] == logged == json.load(open(folder / "results.json"))["last_acc"]
    # a reloaded checkpoint gives the same accuracy with the head, and another one without it
    opt = parse("--distill", "simkd", "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "300",
                "--test_subset", "100", "--loader", "device")
    data = build_loaders(opt)
    other_teacher = build_model("resnet8", 10).eval()  # any weights: the head's are in the checkpoint
    student = build_model("resnet8", 10)
    student.load_state_dict(last["model"])
    probe = probe_shapes(student, other_teacher, distiller_registry["simkd"].needs, 32, data.n_data, 10, "cpu")
    distiller = distiller_registry["simkd"](opt, probe, student, other_teacher)
    distiller.load_state_dict(last["distiller"])
    with_head, _, head_loss = validate(data.val_loader, distiller.eval_model(student), torch.nn.CrossEntropyLoss(), opt)
    _, _, bare_loss = validate(data.val_loader, student, torch.nn.CrossEntropyLoss(), opt)
    assert with_head == pytest.approx(logged, abs=1e-9)
    assert head_loss == pytest.approx(records(folder)[-1]["test_loss"], rel=1e-6) and bare_loss != head_loss
