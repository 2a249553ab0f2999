"""train_student.py end to end on Fashion-MNIST (real images, CPU) with a teacher from train_teacher.py."""
import json
import os
import re
import shlex

import pytest
import torch

import train_student
import train_teacher
from helper.student.teacher import load_teacher, teacher_name_from_path
from helper.errors import UserError
from helper.student.plan import read_plan
from models import build_model
from tests.cifar_fixture import make_fake_cifar100

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
COMMON = ["--dataset", "fashion_mnist", "--num_workers", "0", "--device", "cpu", "--lr_decay_epochs", "100",
          "--seed", "3", "--test_subset", "500"]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train_teacher.main(COMMON + ["--model", "resnet20", "--subset", "2000", "--epochs", "2",
                                 "--model_path", str(root / "models"), "--tb_path", str(root / "tb")])
    return str(root / "models" / "resnet20_fashion_mnist_lr_0.05_decay_0.0005_trial_0" / "resnet20_best.pth")


def student_args(tmp_path, teacher, *extra):
    return COMMON + ["--path_t", teacher, "--model_s", "resnet8", "--subset", "1000",
                     "--model_path", str(tmp_path / "student"), "--tb_path", str(tmp_path / "tb"), *extra]


def test_kd_student_learns_and_records_every_loss_term(tmp_path, teacher_path):
    state = train_student.main(student_args(tmp_path, teacher_path, "--distill", "kd", "--epochs", "3",
                                            "--subset", "2000", "-r", "0.1", "-a", "0.9", "-b", "0"))
    assert state.best_acc > 25.0  # chance is 10%
    (folder,) = (tmp_path / "student").iterdir()  # named by what differs from KD's recipe and the defaults
    assert folder.name == ("S=resnet8_T=resnet20_fashion_mnist_kd_r=0.1_a=0.9_b=0_epochs=3_lr_decay_epochs=100_"
                           "subset=2000_test_subset=500_seed=3_0")
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"train_loss_cls", "train_loss_div", "test_acc", "best_acc"} <= set(r) for r in records)
    results = json.load(open(folder / "results.json"))
    assert results["best_acc"] == pytest.approx(state.best_acc) and results["last_epoch"] == 3
    assert json.load(open(folder / "options.json"))["distill"] == "kd"
    ckpt = torch.load(folder / "resnet8_best.pth", weights_only=True)
    assert ckpt["arch"] == "resnet8" and ckpt["teacher_arch"] == "resnet20" and ckpt["distill"] == "kd"


@pytest.mark.parametrize("memory_dtype", ["float32", "bfloat16"])
def test_crd_resume_restores_the_memory_bank_and_replays_exactly(tmp_path, teacher_path, memory_dtype):
    crd = ["--distill", "crd", "--nce_k", "64", "-r", "1", "-a", "0", "-b", "0.8", "--memory_dtype", memory_dtype]
    train_student.main(student_args(tmp_path / "split", teacher_path, *crd, "--epochs", "1"))
    (split,) = (tmp_path / "split" / "student").iterdir()
    first = torch.load(split / "resnet8_last.pth", weights_only=True)
    bank = first["distiller"]["criterion.contrast.memory_v1"]
    assert bank.dtype == getattr(torch, memory_dtype)
    train_student.main(student_args(tmp_path / "split", teacher_path, *crd, "--epochs", "2", "--resume"))
    train_student.main(student_args(tmp_path / "whole", teacher_path, *crd, "--epochs", "2"))
    assert [f.name for f in (tmp_path / "split" / "student").iterdir()] == [split.name]  # resumed where it started
    (whole_folder,) = (tmp_path / "whole" / "student").iterdir()
    assert whole_folder.name == split.name.replace("epochs=1_", "epochs=2_")
    resumed = torch.load(split / "resnet8_last.pth", weights_only=True)
    whole = torch.load(whole_folder / "resnet8_last.pth", weights_only=True)
    assert not torch.equal(bank, resumed["distiller"]["criterion.contrast.memory_v1"]), "bank kept updating"
    for key, value in whole["distiller"].items():
        torch.testing.assert_close(resumed["distiller"][key], value, msg=key)
    for key, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, msg=key)


def test_published_teacher_without_arch_is_found_from_its_folder_name(tmp_path):
    folder = tmp_path / "resnet8_vanilla"
    folder.mkdir()
    model = build_model("resnet8", 10)
    torch.save({"model": model.state_dict(), "epoch": 240}, folder / "ckpt_epoch_240.pth")
    teacher, arch = load_teacher(str(folder / "ckpt_epoch_240.pth"), 10, torch.device("cpu"))
    assert arch == "resnet8" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_checkpoint_of_another_architecture_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet20"}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, torch.device("cpu"))
    assert "does not match architecture resnet20" in str(err.value) and "\n" not in str(err.value)


def test_unknown_method_lists_the_choices(tmp_path, teacher_path):
    with pytest.raises(UserError, match="unknown --distill 'kdd'.*crd"):
        train_student.main(student_args(tmp_path, teacher_path, "--distill", "kdd"))


def script_commands(name):
    """The train_student.py command lines of a script, with line continuations joined."""
    text = open(os.path.join(ROOT, "scripts", name)).read().replace("\\\n", " ")
    variables = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))
    variables = {k: re.sub(r"^\$\{\w+:-(.*)\}$", r"\1", v) for k, v in variables.items()}  # ${TRIAL:-1}: 1
    commands = []
    for line in text.splitlines():
        if line.startswith("python train_student.py"):
            for var, value in variables.items():
                line = re.sub(rf"\${var}\b", value, line)
            args = [a for a in shlex.split(line)[2:] if a != "$@"]
            commands.append([os.path.join(ROOT, a) if a.startswith("scripts/plans/") else a for a in args])
    return commands


def command_id(args):
    return "group-" + os.path.basename(args[args.index("--plan") + 1])[:-4]


SCRIPT_LINES = script_commands("run_cifar_distill.sh")
GROUP_LINES = [args for args in SCRIPT_LINES if "--plan" in args]


def flag_tokens(args):
    """A line's flags without the teacher, the trial and "$@": what a plan line holds."""
    dropped = {i for i, a in enumerate(args) if a in ("--path_t", "--trial")}
    return tuple(a for i, a in enumerate(args) if i not in dropped and i - 1 not in dropped)


def test_every_single_distill_line_parses_and_is_a_line_of_its_teachers_plan():
    """GROUP=0's one-student lines are the plan files' lines (which the group test below builds), line for line."""
    plans = {args[args.index("--path_t") + 1]: {tuple(tokens) for _, tokens in read_plan(args[args.index("--plan") + 1])}
             for args in GROUP_LINES}
    singles = [args for args in SCRIPT_LINES if "--plan" not in args and "--run_name" not in args]
    assert len(singles) == sum(len(lines) for lines in plans.values())
    own = [args for args in SCRIPT_LINES if "--run_name" in args]  # HKD's assistant: a run of its own in both modes
    assert len(own) == 2 and own[0] == own[1] and own[0][own[0].index("--trial") + 1] == "1"
    hkd = next(args for args in singles if "hkd" in args)
    assert hkd[hkd.index("--path_t") + 1].split("/")[-2] == own[0][own[0].index("--run_name") + 1]
    for args in singles:
        teacher = args[args.index("--path_t") + 1]
        assert flag_tokens(args) in plans[teacher], args
    for args in singles + own:
        train_student.parse_option(args + ["--device", "cpu"])


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory):
    return make_fake_cifar100(str(tmp_path_factory.mktemp("cifar")), 1, 1, seed=0)


@pytest.fixture(scope="module")
def published_teacher(tmp_path_factory):
    """A full-size CIFAR-100 teacher file per architecture, written once for the module."""
    root, made = tmp_path_factory.mktemp("teachers"), {}

    def get(path):
        if path not in made:
            arch = "resnet8x4_double" if "resnet8x4_double_best" in path else teacher_name_from_path(path)
            teacher = root / str(len(made)) / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
            teacher.parent.mkdir(parents=True)
            ckpt = {"model": build_model(arch, 100).state_dict()}  # published style: arch from the folder name ...
            if "student_model" in path:
                ckpt["arch"] = arch  # ... except our own student checkpoints (HKD's assistant), which carry it
            torch.save(ckpt, teacher)
            made[path] = str(teacher)
        return made[path]
    return get


@pytest.mark.parametrize("args", GROUP_LINES, ids=command_id)
def test_every_distill_group_line_parses_and_builds_every_student(args, fake_cifar100, published_teacher):
    path = next(a for a in args if a.endswith(".pth"))
    args = [published_teacher(path) if a == path else a for a in args]
    assert train_student.main(args + ["--dry_run", "--data_root", fake_cifar100, "--device", "cpu",
                                      "--num_workers", "0", "--nce_k", "16"]) is None


HEADLINE = {
    "crcd": ["--distill", "crcd", "--nce_k", "32", "--nce_t", "0.05", "-r", "1", "-a", "0.9", "-b", "1",
             "--with_grad", "--grad_kd_type", "crcd"],
    "semckd": ["--distill", "semckd", "-r", "1", "-a", "1", "-b", "40"],  # 400 (CIFAR) diverges on this toy teacher
    "dkd": ["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1", "--warmup", "2"],
    "ckd": ["--distill", "ckd", "-r", "1", "-a", "0", "-b", "100", "--mimic_schedule", "240"],
    "ctkd-global": ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0", "--have_mlp", "1", "--decay_loops", "2"],
    "ctkd-instance-dkd": ["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1", "--have_mlp", "1",
                          "--mlp_name", "instance", "--decay_loops", "2"],
}


@pytest.mark.parametrize("name", sorted(HEADLINE))
def test_headline_method_runs_end_to_end_and_resumes_exactly(tmp_path, teacher_path, name):
    args = HEADLINE[name] + ["--subset", "512"]
    train_student.main(student_args(tmp_path / "split", teacher_path, *args, "--epochs", "1"))
    train_student.main(student_args(tmp_path / "split", teacher_path, *args, "--epochs", "2", "--resume"))
    train_student.main(student_args(tmp_path / "whole", teacher_path, *args, "--epochs", "2"))
    (split,) = (tmp_path / "split" / "student").iterdir()  # the resume continued in the folder of --epochs 1
    (whole_folder,) = (tmp_path / "whole" / "student").iterdir()
    resumed = torch.load(split / "resnet8_last.pth", weights_only=True)
    whole = torch.load(whole_folder / "resnet8_last.pth", weights_only=True)
    for part in ("model", "distiller") + (("temperature",) if "ctkd" in name else ()):
        assert whole[part] or name not in ("crcd", "semckd"), part  # only these have modules of their own
        for key, value in whole[part].items():
            torch.testing.assert_close(resumed[part][key], value, msg=f"{part}.{key}")
    records = [json.loads(line) for line in open(split / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    if "ctkd" in name:
        assert all("temp_mean" in r and "temp_std" in r for r in records)
        assert records[1]["ctkd_lambda"] == pytest.approx(-1.0)  # cosine curriculum done after --decay_loops 2
