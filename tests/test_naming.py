"""Run folders named by what differs: a sweep never collides, a second run of one (protocol, seed) is refused,
--run_name/--tag/--repdistiller_names, --dry_run checks the folder, older folders still resume. Fashion-MNIST, CPU."""
import json
import os
import re

import pytest

import train_student
from helper.errors import UserError
from helper.naming import protocol_flags, student_run_name
from helper.options import finish_student_options, student_parser
from helper.recipes import apply_recipe
from helper.runs.protocol import experiment_flags
from helper.tools import table

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
SWEEP = [f"--kd_T {t} --learning_rate {lr}" for t in (2, 4, 8) for lr in (0.05, 0.01)]


def resolved(*args, teacher="resnet32x4"):
    """The options of a student command line, resolved against the teacher as a run resolves them."""
    parser = student_parser()
    opt = finish_student_options(parser.parse_args(["--path_t", "t.pth", *args]))
    explicit = {a.dest for a in parser._actions for s in a.option_strings if s in args}
    apply_recipe(opt, teacher, explicit)
    opt.model_t = teacher
    return opt


def name(*args):
    return student_run_name(resolved(*args), "resnet32x4")


def test_a_name_holds_every_protocol_flag_that_differs_and_nothing_else():
    assert name() == "S=resnet8_T=resnet32x4_cifar100_kd_r=0.1_a=0.9_b=0_0"  # KD's recipe: nothing differs
    assert name("--kd_T", "8", "--learning_rate", "0.01") == "S=resnet8_T=resnet32x4_cifar100_kd_r=0.1_a=0.9_b=0_kd_T=8_lr=0.01_0"
    assert name("--nce_k", "100") == name()  # CRD's flag on a KD run: not KD's protocol
    assert name("--distill", "crd", "--nce_k", "1024") != name("--distill", "crd")
    assert "nce_k=1024" in name("--distill", "crd", "--nce_k", "1024")
    assert name("--epochs", "30") != name() and name("--subset", "500") != name()
    assert name("--weight_decay", "0.001").endswith("_wd=0.001_0")
    assert name("--have_mlp", "1").startswith("S=resnet8_T=resnet32x4_cifar100_kd+ctkd=global_")  # the tag spells it
    assert name("--trial", "3").endswith("_3") and "seed" not in name("--trial", "3")
    assert name("--trial", "3", "--seed", "0").endswith("_seed=0_3")  # a seed other than the trial's is named
    assert name("--kd_T", "4") == name()  # the default's value given explicitly: nothing differs
    assert name("--model_s", "MobileNetV2") == name("--model_s", "MobileNetV2", "--learning_rate", "0.01")


def test_names_are_valid_on_every_common_file_system_and_bounded():
    long = name("--distill", "crd", "--lr_decay_epochs", ",".join(str(e) for e in range(2, 80)), "--nce_k", "7")
    for text in (name("--lr_decay_epochs", "100,150"), name("--distill", "crcd", "--with_grad"), long):
        assert re.fullmatch(r"[A-Za-z0-9._=+-]+", text), text  # no ':' (Windows, scp), '/', ',' or spaces
    assert "lr_decay_epochs=100-150" in name("--lr_decay_epochs", "100,150")
    assert len(long.encode()) <= 200 and "flags=" in long and long.endswith("_0")
    assert long != name("--distill", "crd", "--lr_decay_epochs", ",".join(str(e) for e in range(2, 81)))


def test_run_name_tag_and_repdistiller_names():
    assert name("--run_name", "mine") == "mine"
    assert name("--tag", "v2") == "S=resnet8_T=resnet32x4_cifar100_kd_r=0.1_a=0.9_b=0_0_v2"
    assert name("--repdistiller_names") == "S:resnet8_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_0"
    for flag, bad in (("--run_name", "a/b"), ("--tag", "x y"), ("--run_name", "..")):
        with pytest.raises(UserError, match=f"{flag} .*plain name"):
            resolved(flag, bad)
    with pytest.raises(UserError, match="--run_name names one run folder"):
        resolved("--run_name", "x", "--distill", "kd,crd")


def test_the_protocol_drops_other_methods_flags_and_plugins_that_are_off():
    kd = protocol_flags(experiment_flags(resolved()))
    assert "nce_k" not in kd and "hint_layer" not in kd and "have_mlp" not in kd and kd["kd_T"] == 4
    assert "kd_T" not in protocol_flags(experiment_flags(resolved("--distill", "crd")))  # -a 0: no KL term
    crd = protocol_flags(experiment_flags(resolved("--distill", "crd", "-a", "1")))
    assert {"nce_k", "nce_t", "feat_dim", "kd_T"} <= set(crd)
    ctkd = protocol_flags(experiment_flags(resolved("--have_mlp", "1")))
    assert {"have_mlp", "t_start", "t_end"} <= set(ctkd)
    assert "init_epochs" in protocol_flags(experiment_flags(resolved("--distill", "factor")))
    assert protocol_flags({"distill": "gone", "nce_k": 5}) == {"distill": "gone", "nce_k": 5}  # unknown: keep all


def common(root, teacher, *extra):
    return ["--path_t", teacher, "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "128",
            "--test_subset", "50", "--batch_size", "64", "--epochs", "1", "--device", "cpu", "--num_workers", "0",
            "--no_progress", "--model_path", str(root / "student"), "--tb_path", str(root / "tb"), *extra]


@needs_data
def test_a_sweep_as_a_plan_never_collides_and_a_rerun_is_refused_or_overwritten(tmp_path, teacher):
    plan = tmp_path / "sweep.txt"
    plan.write_text("\n".join(SWEEP) + "\n")
    for trial in ("0", "1"):
        train_student.main(common(tmp_path, teacher, "--plan", str(plan), "--trial", trial))
    folders = sorted(os.listdir(tmp_path / "student"))
    assert len(folders) == 12 and all(os.path.isfile(tmp_path / "student" / f / "results.json") for f in folders)
    settings = {}
    for folder in folders:
        protocol = json.load(open(tmp_path / "student" / folder / "results.json"))["protocol"]
        key = (protocol["flags"]["kd_T"], protocol["flags"]["learning_rate"])
        settings.setdefault(key, set()).add(protocol["seed"])
    assert settings == {(t, lr): {0, 1} for t in (2, 4, 8) for lr in (0.05, 0.01)}
    line = common(tmp_path, teacher, "--kd_T", "8", "--learning_rate", "0.01")
    with pytest.raises(UserError, match="already holds a finished run"):  # the same line again: its own folder
        train_student.main(line)
    with pytest.raises(UserError, match="finished run of this protocol with seed 0.*another --seed"):
        train_student.main(line + ["--trial", "9", "--seed", "0"])  # another folder, the same experiment
    assert len(os.listdir(tmp_path / "student")) == 12
    train_student.main(line + ["--overwrite"])
    assert len(os.listdir(tmp_path / "student")) == 12
    _, rows = table.build([str(tmp_path / "student")])
    cells = {row["label"]: row["n"] for row in rows if row["status"] == "finished"}
    assert cells == {"kd": 2, "kd (--learning_rate 0.01)": 2, **{f"kd (--kd_T {t})": 2 for t in (2, 8)},
                     **{f"kd (--kd_T {t} --learning_rate 0.01)": 2 for t in (2, 8)}}, cells


@needs_data
def test_dry_run_checks_the_folder_and_writes_nothing(tmp_path, teacher):
    train_student.main(common(tmp_path, teacher, "--tag", "a"))
    (folder,) = os.listdir(tmp_path / "student")
    before = sorted(os.listdir(tmp_path / "student" / folder))
    with pytest.raises(UserError, match="already holds a finished run"):
        train_student.main(common(tmp_path, teacher, "--tag", "a", "--dry_run"))
    assert sorted(os.listdir(tmp_path / "student" / folder)) == before
    assert train_student.main(common(tmp_path, teacher, "--tag", "a", "--dry_run", "--overwrite")) is None
    assert sorted(os.listdir(tmp_path / "student" / folder)) == before  # a dry run deletes nothing
    assert train_student.main(common(tmp_path, teacher, "--tag", "b", "--dry_run")) is None
    assert os.listdir(tmp_path / "student") == [folder]


@needs_data
def test_a_run_in_a_folder_with_the_older_name_resumes_there(tmp_path, teacher):
    train_student.main(common(tmp_path, teacher, "--repdistiller_names", "--save_freq", "1"))
    (old,) = os.listdir(tmp_path / "student")
    assert old.startswith("S:resnet8_T:resnet8_fashion_mnist_kd_r:0.1_a:0.9_b:0.0_")
    train_student.main(common(tmp_path, teacher, "--epochs", "2", "--resume"))  # today's name: no such folder
    assert os.listdir(tmp_path / "student") == [old]
    assert [json.loads(line)["step"] for line in open(tmp_path / "student" / old / "log.jsonl")] == [1, 2]
    log = (tmp_path / "student" / old / "train.log").read_text()
    assert "continuing this run in " + old in log
    assert "--resume: --epochs 2, where the run was started with --epochs 1: it now trains to epoch 2" in log


# train_student's flags that only some methods read (RepDistiller's shared method flags): each must be declared by
# the methods that read it, never count for the others.
METHOD_FLAGS = {"kd_T", "feat_dim", "mode", "nce_k", "nce_t", "nce_m", "memory_dtype", "percent", "hint_layer",
                "init_epochs"}
# What a method's file reads from `opt` but does not use: ICKD's loss class takes feat_dim from the Namespace its
# Distiller builds (t_dim), never from the command line.
NOT_READ = {"ICKD.py": {"feat_dim"}}


def test_every_shared_flag_a_method_reads_is_declared():
    """A method file that reads another method's or a shared method flag (opt.nce_k) must declare it in `reads`,
    else its runs would not be split (or named) by it."""
    import inspect
    import sys as _sys

    from distiller_zoo.base import distiller_registry
    from helper.naming import method_flags, owned_flags
    for name, cls in distiller_registry.items():
        path = inspect.getsourcefile(_sys.modules[cls.__module__])
        source = open(path).read()
        read = set(re.findall(r"\bopt\.(\w+)", source)) | set(re.findall(r"getattr\(opt, \"(\w+)\"", source))
        read = (read & (owned_flags() | METHOD_FLAGS)) - NOT_READ.get(os.path.basename(path), set())
        missing = read - method_flags(cls) - ({"kd_T"} if name in ("kd",) else set())
        assert not missing, f"--distill {name} reads {sorted(missing)}: add them to its `reads`"
    assert METHOD_FLAGS <= owned_flags()
