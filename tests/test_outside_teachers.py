"""Teachers from elsewhere: torchvision:/timm: networks by name (the repository's forward contract, the library's
state_dict keys), --model_t, what a teacher sees (re-normalised and resized when it expects another input), RepDistiller
`*_last.pth` files with their argparse.Namespace options, and one-line refusals. Small models, Fashion-MNIST, CPU."""
import argparse
import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision

import train_student
from dataset.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from helper.errors import UserError
from helper.runs.files import load_checkpoint
from helper.student.teacher import (
    InputSpec,
    TeacherInput,
    adapted,
    check_input_size,
    dataset_input,
    expected_input,
    load_teacher,
    parse_teacher_input,
)
from helper.student.build import build_shared
from helper.tools import evaluate
from models import build_model, input_size, model_dict
from tests.student_utils import built, parse, train

timm = pytest.importorskip("timm")
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
CPU = torch.device("cpu")
FASHION = dataset_input("fashion_mnist", 32)
COMMON = ["--dataset", "fashion_mnist", "--num_workers", "0", "--device", "cpu", "--no_progress", "--seed", "3",
          "--subset", "64", "--test_subset", "40", "--batch_size", "32", "--epochs", "1", "--lr_decay_epochs", "100"]


def one_line(error, *phrases):
    message = str(error.value)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message


def library_file(tmp_path, name, build, **extra):
    """A file as the library's users write it: torch.save of a plain state_dict (or {'model': ..., **extra})."""
    torch.manual_seed(0)
    state_dict = build().state_dict()
    path = tmp_path / name
    torch.save({"model": state_dict, **extra} if extra else state_dict, path)
    return path


# ---- networks by name ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, stages", [("torchvision:resnet18", 4), ("torchvision:mobilenet_v3_small", 4),
                                          ("timm:resnet10t", 4), ("timm:test_vit", None)])
def test_library_networks_keep_the_forward_contract(name, stages):
    model = build_model(name, 10).eval()
    size = 160 if name == "timm:test_vit" else 32  # test_vit has a fixed input size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        direct = model(x)  # the library's forward: the same sums, maybe in another kernel order
        torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-4 * float(direct.abs().max().clamp(min=1)))
        _, preact_logits = model(x, is_feat=True, preact=True)
    assert logits.shape == (2, 10) and torch.equal(preact_logits, logits)
    assert all(f.dim() == 4 for f in feats[:-1]) and feats[-1].dim() == 2
    if stages is not None:
        assert len(feats) == stages + 2  # [stem, stage 1..n, pooled]
        assert [f.shape[-1] for f in feats[:-1]] == sorted({f.shape[-1] for f in feats[:-1]}, reverse=True)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    again = classifier(feats[-1])  # pooled is what the classifier reads
    torch.testing.assert_close(again, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max().clamp(min=1)))


def test_library_names_work_wherever_model_names_do():
    assert "torchvision:resnet18" in model_dict and "timm:resnet10t" in model_dict
    assert "timm:no_such_net" not in model_dict and "torchvision:vit_b_16" not in model_dict
    assert not any(":" in name for name in model_dict)  # listings keep the registered names
    assert input_size["timm:resnet10t"] is None and input_size["timm:test_vit"] == 160
    assert input_size["resnet8"] == 32 and model_dict["resnet8"](num_classes=3).fc.out_features == 3
    own = torchvision.models.resnet18(num_classes=10)
    built = build_model("torchvision:resnet18", 10)
    assert isinstance(built, torchvision.models.ResNet) and list(built.state_dict()) == list(own.state_dict())
    built.load_state_dict(own.state_dict(), strict=True)
    with pytest.raises(UserError) as err:
        build_model("torchvision:vit_b_16", 10)
    one_line(err, "torchvision:vit_b_16", "timm:")


# ---- --model_t and the architecture -------------------------------------------------------------------------------
def test_a_torchvision_resnet18_file_is_a_teacher_at_32px(tmp_path):
    path = library_file(tmp_path, "resnet18.pth", lambda: torchvision.models.resnet18(num_classes=10))
    reference = torchvision.models.resnet18(num_classes=10).eval()
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(4, 3, 32, 32)
    teacher, arch = load_teacher(str(path), 10, CPU, model_t="torchvision:resnet18", data_input=FASHION,
                                 setting="dataset")
    assert arch == "torchvision:resnet18" and not isinstance(teacher, TeacherInput)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference(x))
    # the same weights with the side they were trained at recorded: re-normalised from Fashion-MNIST's statistics to
    # ImageNet's (torchvision's configuration), not resized
    path32 = library_file(tmp_path, "resnet18_32.pth", lambda: torchvision.models.resnet18(num_classes=10),
                          input_size=32)
    teacher, _ = load_teacher(str(path32), 10, CPU, model_t="torchvision:resnet18", data_input=FASHION)
    assert isinstance(teacher, TeacherInput) and teacher.size == 32
    with torch.no_grad():
        assert teacher.adapt(x).shape == (4, 3, 32, 32)
    # without a record or a setting: torchvision's pretrained configuration, 224 px
    teacher, _ = load_teacher(str(path), 10, CPU, model_t="torchvision:resnet18", data_input=FASHION)
    assert isinstance(teacher, TeacherInput) and teacher.size == 224


def test_model_t_contradicting_the_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8"}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, CPU, model_t="resnet20")
    one_line(err, "--model_t resnet20", "resnet8", str(path))
    assert load_teacher(str(path), 10, CPU, model_t="resnet8")[1] == "resnet8"


MODEL_T_CASES = [(None, "pass --model_t"), ("timm:no_such_net", "timm has no model"),
                 ("resnet9000", "unknown --model_t 'resnet9000'"),
                 ("torchvision:resnet34", "does not match architecture torchvision:resnet34")]


@pytest.mark.parametrize("model_t, says", MODEL_T_CASES)
def test_a_file_without_arch_needs_a_right_model_t(tmp_path, model_t, says):
    path = library_file(tmp_path, "weights.pth", lambda: torchvision.models.resnet18(num_classes=10))
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, CPU, model_t=model_t)
    one_line(err, says)


def test_a_teacher_for_another_input_size_names_the_teacher_flags(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8"}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, CPU, data_input=dataset_input("imagenet", 224))
    one_line(err, "--path_t", "--model_t", "expects 32px inputs but --dataset gives 224px")
    data = argparse.Namespace(input_size=224)
    with pytest.raises(UserError) as err:
        check_input_size("resnet8", data, "--model_s")
    one_line(err, "--model_s resnet8 expects 32px")
    check_input_size("timm:resnet10t", data, "--model_s")  # adaptive pooling: any size


@pytest.mark.parametrize("extra, says", [({"input_size": "big"}, "records input_size 'big'"),
                                         ({"std": [0.2, 0.0, 0.2]}, "records std"),
                                         ({"mean": [0.5, 0.5]}, "records mean")])
def test_a_damaged_input_record_is_one_line(tmp_path, extra, says):
    path = tmp_path / "t.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", **extra}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, CPU, data_input=FASHION)
    one_line(err, f"--path_t {path}", says)
    for bad in ("0", "huge", "-3"):
        with pytest.raises(UserError) as err:
            parse_teacher_input(bad)
        one_line(err, "--teacher_input", "auto, dataset")


# ---- what the teacher sees ----------------------------------------------------------------------------------------
class Recorder(torch.nn.Module):
    """A stand-in teacher that keeps the batch it is given."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, is_feat=False, preact=False):
        self.seen = x
        return x.mean((2, 3))


@pytest.mark.parametrize("side, antialias", [(64, False), (24, True)])
def test_the_adapter_unnormalises_resizes_and_renormalises(side, antialias):
    data = InputSpec(32, (0.2, 0.3, 0.4), (0.25, 0.5, 0.3), "data")
    seen = InputSpec(side, IMAGENET_MEAN, IMAGENET_STD)
    recorder = Recorder()
    teacher = adapted(recorder, data, seen)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    teacher.double()(x)
    pixels = x * torch.tensor(data.std).view(1, 3, 1, 1) + torch.tensor(data.mean).view(1, 3, 1, 1)
    resized = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False, antialias=antialias)
    expected = (resized - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(recorder.seen, expected, rtol=1e-6, atol=1e-6)


def test_no_adapter_when_the_teacher_expects_the_dataset_input(tmp_path):
    recorder = Recorder()
    assert adapted(recorder, FASHION, InputSpec(32, FASHION_MNIST_MEAN, FASHION_MNIST_STD)) is recorder
    path = tmp_path / "t.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10}, path)
    teacher, _ = load_teacher(str(path), 10, CPU, data_input=FASHION)
    assert type(teacher).__name__ == "ResNet"  # this repository's network, unwrapped, exactly as before


def test_what_a_teacher_expects_follows_the_documented_order():
    timm_file, ours = {"conv1.weight": torch.zeros(1)}, {"arch": "timm:resnet10t", "model": {}}
    cfg = timm.models.get_pretrained_cfg("resnet10t")
    spec, source = expected_input(timm_file, "timm:resnet10t", "t.pth", FASHION)
    assert (spec.size, spec.mean, spec.std) == (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std))
    assert "timm's pretrained configuration" in source
    assert expected_input(ours, "timm:resnet10t", "t.pth", FASHION)[0] == FASHION  # trained here: the batches
    recorded = {**ours, "input_size": 48, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert expected_input(recorded, "timm:resnet10t", "t.pth", FASHION)[0] == InputSpec(48, (0.5,) * 3, (0.5,) * 3)
    assert expected_input(timm_file, "timm:resnet10t", "t.pth", FASHION, setting=32)[0].size == 32
    assert expected_input(recorded, "timm:resnet10t", "t.pth", FASHION, setting="dataset")[0] == FASHION


# ---- end to end ---------------------------------------------------------------------------------------------------
@needs_fmnist
def test_a_timm_teacher_file_distils_students_with_kd_and_features(tmp_path, caplog):
    caplog.set_level("INFO", logger="kd")
    path = library_file(tmp_path, "resnet10t.pth", lambda: timm.create_model("resnet10t", num_classes=10))
    states = train_student.main(COMMON + ["--path_t", str(path), "--model_t", "timm:resnet10t",
                                          "--model_s", "resnet8,timm:resnet10t", "--distill", "kd,attention,crd",
                                          "--nce_k", "16", "--model_path", str(tmp_path / "s"),
                                          "--tb_path", str(tmp_path / "tb")])
    assert len(states) == 6
    size = timm.models.get_pretrained_cfg("resnet10t").input_size[-1]
    assert any(f"teacher timm:resnet10t sees {size}px (resized bilinearly from 32px)" in r.getMessage()
               for r in caplog.records)
    for results in glob.glob(str(tmp_path / "s" / "*" / "results.json")):
        assert json.load(open(results))["last_epoch"] == 1
    ckpts = glob.glob(str(tmp_path / "s" / "*" / "*_last.pth"))
    assert len(ckpts) == 6 and all(load_checkpoint(c)["teacher_arch"] == "timm:resnet10t" for c in ckpts)


@needs_fmnist
def test_a_torchvision_resnet18_teacher_at_32px_trains_a_hint_student_in_memory(tmp_path):
    path = library_file(tmp_path, "resnet18.pth", lambda: torchvision.models.resnet18(num_classes=10))
    opt = parse("--path_t", str(path), "--model_t", "torchvision:resnet18", "--dataset", "fashion_mnist",
                "--subset", "64", "--batch_size", "32", "--distill", "hint", "--model_s", "resnet8")
    opt.teacher_input = "dataset"  # --teacher_input dataset (read with getattr until helper/options.py declares it)
    shared = build_shared(opt, ["hint"])
    assert shared.teacher_arch == "torchvision:resnet18" and not isinstance(shared.teacher, TeacherInput)
    student = built(opt, shared)
    before = {k: v.clone() for k, v in student.student.state_dict().items()}
    stats = train(student, shared, list(shared.data.train_loader))
    assert math.isfinite(stats["loss_hint"]) and stats["loss_hint"] > 0, stats  # FitNet on the teacher's layer2 map
    assert any(not torch.equal(before[k], v) for k, v in student.student.state_dict().items())


@needs_fmnist
def test_a_torchvision_file_is_evaluated_with_model_t(tmp_path):
    path = library_file(tmp_path, "resnet18.pth", lambda: torchvision.models.resnet18(num_classes=10))
    flags = [str(path), "--model_t", "torchvision:resnet18", "--dataset", "fashion_mnist", "--test_subset", "20",
             "--device", "cpu", "--num_workers", "0", "--json"]
    result = evaluate.main(flags + ["--input", "dataset"])
    assert result["arch"] == "torchvision:resnet18" and result["arch_source"] == "--model_t"
    assert result["input"].startswith("the batches as they are (32px") and result["images"] == 20
    assert evaluate.main(flags)["input"].startswith("224px (resized bilinearly from 32px)")


# ---- RepDistiller's files and crafted ones ------------------------------------------------------------------------
def repdistiller_last(tmp_path):
    """A `*_last.pth` exactly as RepDistiller's train_teacher.py writes it: {'opt': Namespace, 'model', 'optimizer'}."""
    folder = tmp_path / "resnet8_fashion_mnist_lr_0.05_decay_0.0005_trial_0"
    folder.mkdir()
    model = build_model("resnet8", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    opt = argparse.Namespace(print_freq=100, tb_freq=500, save_freq=40, batch_size=64, num_workers=8, epochs=240,
                             learning_rate=0.05, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1,
                             weight_decay=5e-4, momentum=0.9, dataset="cifar100", model="resnet8", trial="0",
                             model_path="./save/models", tb_path="./save/tensorboard",
                             model_name="resnet8_cifar100_lr_0.05_decay_0.0005_trial_0",
                             tb_folder="./save/tensorboard/x", save_folder="./save/models/x")
    path = folder / "resnet8_last.pth"
    torch.save({"opt": opt, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    return path, model


@needs_fmnist
def test_a_repdistiller_last_file_loads_as_teacher_and_evaluates(tmp_path):
    path, model = repdistiller_last(tmp_path)
    assert isinstance(load_checkpoint(str(path))["opt"], argparse.Namespace)
    teacher, arch = load_teacher(str(path), 10, CPU, data_input=FASHION)
    assert arch == "resnet8"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), model.eval()(x))
    result = evaluate.main([str(path), "--dataset", "fashion_mnist", "--test_subset", "20", "--device", "cpu",
                            "--num_workers", "0", "--json"])
    assert result["arch"] == "resnet8" and result["images"] == 20


class RunsShell:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Config:
    """A plain object of the user's own class."""


@pytest.mark.parametrize("kind, global_name", [("system", "posix.system"), ("local", "Config")])
def test_a_file_with_another_global_is_refused_in_one_line_naming_it(tmp_path, kind, global_name):
    path = tmp_path / "resnet8_vanilla" / "ckpt.pth"
    path.parent.mkdir()
    opt = argparse.Namespace(model="resnet8")
    extra = RunsShell(tmp_path / "pwned") if kind == "system" else Config()
    torch.save({"opt": opt, "model": build_model("resnet8", 10).state_dict(), "extra": extra}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, CPU)
    one_line(err, str(path), "is not a checkpoint this tool can load safely", global_name, "state_dict()")
    assert "argparse.Namespace," not in str(err.value) and "weights_only" not in str(err.value)
    assert not (tmp_path / "pwned").exists()
