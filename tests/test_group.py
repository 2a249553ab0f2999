"""Several students in one process (train_student.py --plan / --distill a,b): each ends bit-identical to its single
run; a diverging student stops alone; a group resumes exactly; trials without --seed differ. Fashion-MNIST, CPU."""
import json
import os
import re

import pytest
import torch

import train_student
from helper.errors import NonFiniteLossError, UserError

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
TIMING = {"time", "epoch_time", "test_time", "images_per_s", "eta_s"}  # wall-clock fields: the only ones allowed to differ

# One line per student, as in scripts/plans/*.txt: full batches (semckd), more epochs (crcd), an init stage (factor),
# its own negatives (crd, crcd), a learnable instance-wise temperature, a warm-up (dkd).
PLAN = ["--distill kd",
        "--distill crd --nce_k 32",
        "--distill dkd --warmup 2",
        "--distill kd --have_mlp 1 --mlp_name instance --decay_loops 2",
        "--distill semckd -b 40",
        "--distill crcd --nce_k 32 --epochs 3",
        "--distill factor --init_epochs 1"]


def common(root, teacher, epochs=2):
    # 300 images, batch 64: 4 full batches and one of 44 (SemCKD skips it)
    return ["--path_t", teacher, "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "300",
            "--test_subset", "100", "--batch_size", "64", "--epochs", str(epochs), "--device", "cpu",
            "--num_workers", "0", "--seed", "5", "--lr_decay_epochs", "2", "--save_freq", "1", "--no_progress",
            "--model_path", str(root / "student"), "--tb_path", str(root / "tb")]


def started_name(name):
    """The folder name of a run started with --epochs 1 and resumed to 2 (its folder keeps the name it started with),
    from the 2-epoch run's name."""
    return re.sub(r"(?<!decay)(?<!init)_epochs=2_", "_epochs=1_", name)


def folders(root):
    return sorted(p for p in (root / "student").iterdir())


def records(folder):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in open(folder / "log.jsonl")]


def assert_same_run(a, b):
    """Bit-identical final checkpoints (weights, optimizer, method state, plug-ins) and log values."""
    last_a, last_b = (torch.load(next(f.glob("*_last.pth")), weights_only=True) for f in (a, b))
    for part in ("model", "distiller", "temperature"):
        assert (part in last_a) == (part in last_b), part
        for key, value in last_a.get(part, {}).items():
            assert torch.equal(value, last_b[part][key]), (a.name, part, key)
    for group_a, group_b in zip(last_a["optimizer"]["state"].values(), last_b["optimizer"]["state"].values()):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a), a.name
    assert records(a) == records(b), a.name


def test_every_student_of_a_group_equals_its_single_run(tmp_path, teacher):
    plan = tmp_path / "plan.txt"
    plan.write_text("# the whole group shares --path_t, the data and the seed\n" + "\n".join(PLAN) + "\n")
    states = train_student.main(common(tmp_path / "group", teacher) + ["--plan", str(plan)])
    assert len(states) == len(PLAN)
    for i, line in enumerate(PLAN):
        train_student.main(common(tmp_path / f"single{i}", teacher) + line.split())
    grouped = folders(tmp_path / "group")
    singles = [f for i in range(len(PLAN)) for f in folders(tmp_path / f"single{i}")]
    assert [f.name for f in grouped] == sorted(f.name for f in singles)
    for folder in grouped:
        assert_same_run(folder, next(f for f in singles if f.name == folder.name))
    crcd = next(f for f in grouped if "_crcd" in f.name)
    assert [r["step"] for r in records(crcd)] == [1, 2, 3]  # it kept going after the others
    factor = next(f for f in grouped if "_factor_" in f.name)
    assert [(r["kind"], r["step"]) for r in records(factor)] == [("init", 1), ("epoch", 1), ("epoch", 2)]
    results = json.load(open(crcd / "results.json"))
    assert results["status"] == "finished" and results["protocol"]["seed"] == 5
    assert results["protocol"]["teacher"]["sha256"] and results["protocol"]["flags"]["epochs"] == 3


def test_a_diverging_student_stops_alone_and_keeps_its_last_good_checkpoint(tmp_path, teacher):
    blow_up = "--distill kd --trial diverge --lr_decay_rate 1e9 --lr_decay_epochs 1"  # epoch 2: lr 5e7
    plan = tmp_path / "plan.txt"
    plan.write_text("--distill kd\n" + blow_up + "\n")
    with pytest.raises(NonFiniteLossError, match="1 of 2 students stopped"):
        train_student.main(common(tmp_path, teacher) + ["--plan", str(plan)])
    good, bad = (next(f for f in folders(tmp_path) if f.name.endswith(t)) for t in ("_0", "_diverge"))
    assert json.load(open(good / "results.json"))["last_epoch"] == 2
    failed = json.load(open(bad / "results.json"))
    assert failed["status"] == "failed" and "epoch 2" in failed["error"] and "\n" not in failed["error"]
    last = torch.load(bad / "resnet8_last.pth", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert [r["step"] for r in records(bad)] == [1]


def test_a_resumed_group_equals_the_uninterrupted_group(tmp_path, teacher):
    group = ["--distill", "kd,crd,factor", "--nce_k", "32", "--init_epochs", "1"]
    train_student.main(common(tmp_path / "split", teacher, epochs=1) + group)
    train_student.main(common(tmp_path / "split", teacher, epochs=2) + group + ["--resume"])
    train_student.main(common(tmp_path / "whole", teacher, epochs=2) + group)
    for split, whole in zip(folders(tmp_path / "split"), folders(tmp_path / "whole")):
        assert split.name == started_name(whole.name)
        assert_same_run(split, whole)


def test_students_that_disagree_on_shared_flags_or_folders_stop_at_start_up(tmp_path, teacher):
    plan = tmp_path / "plan.txt"
    plan.write_text("--distill kd\n--distill crd --batch_size 32\n")
    with pytest.raises(UserError, match="line 1 of .*line 2 of .*--batch_size"):
        train_student.main(common(tmp_path, teacher) + ["--plan", str(plan)])
    plan.write_text("--distill dkd --dkd_beta 8\n--distill dkd --dkd_beta 8 --nce_k 5\n")  # CRD's flag: not DKD's
    with pytest.raises(UserError, match="same run folder .*--trial"):
        train_student.main(common(tmp_path, teacher) + ["--plan", str(plan)])
    assert not (tmp_path / "student").exists()


def test_trials_without_a_seed_differ_and_a_trial_replays_itself(tmp_path, teacher):
    def run(root, trial):
        args = [a for a in common(root, teacher, epochs=1) if a not in ("--seed", "5")]
        train_student.main(args + ["--distill", "kd", "--trial", trial, "--plot"])
        (folder,) = folders(root)
        return folder, torch.load(folder / "resnet8_last.pth", weights_only=True)

    one, first = run(tmp_path / "a", "1")
    two, second = run(tmp_path / "b", "2")
    again, replay = run(tmp_path / "c", "1")
    assert json.load(open(one / "options.json"))["seed"] == 1 and json.load(open(two / "options.json"))["seed"] == 2
    assert json.load(open(one / "results.json"))["protocol"]["seed"] == 1
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert all(torch.equal(first["model"][k], replay["model"][k]) for k in first["model"])
    assert (one / "curves.png").stat().st_size > 0  # --plot
