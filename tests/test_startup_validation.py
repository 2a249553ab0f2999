"""Start-up validation (reliability tour 2): inputs that ended in a traceback, a wrong message or a silent acceptance
are one `error:` line naming the flag or file (or, for --amp fp16 on the CPU, a warning), and a refused start writes
nothing. Fashion-MNIST subsets on the CPU."""
import gzip
import os
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
import train_teacher
from dataset import build_loaders
from dataset.fashion_mnist import load_fashion_mnist
from helper.student.teacher import load_teacher
from helper.errors import UserError
from models import build_model
from tests.test_reliability import FMNIST, assert_error_line, assert_one_line, cli, needs_fmnist, student_args, \
    teacher_args

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


def idx_bytes(array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_file(folder, name, n):
    """One gzipped IDX file of `n` random images or labels."""
    shape = (n, 28, 28) if "images" in name else (n,)
    array = np.random.default_rng(0).integers(0, 10 if "labels" in name else 256, shape)
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
        f.write(idx_bytes(array))
    return os.path.join(folder, name + ".gz")


# ---- flags: loss weights, decay epochs, seeds -----------------------------------------------------------------------
BAD_FLAGS = [(["-b", "nan"], "--beta must be a finite number >= 0"), (["-a", "inf"], "--alpha must be a finite number"),
             (["-r", "-1"], "--gamma must be a finite number >= 0, got -1.0"),
             (["--lr_decay_epochs", "-5"], "--lr_decay_epochs"), (["--lr_decay_epochs", "100,0"], "--lr_decay_epochs"),
             (["--seed", "99999999999999999999999"], "--seed 99999999999999999999999"),
             (["--seed", "-1"], "--seed -1"), (["--trial", "99999999999999999999"], "--trial 99999999999999999999")]


@pytest.mark.parametrize("flags,says", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_weight_decay_epoch_or_seed_is_one_line_naming_the_flag(tmp_path, flags, says):
    with pytest.raises(UserError) as err:
        train_student.parse_option(student_args(tmp_path, "t.pth", *flags))
    assert_one_line(err, says)


def test_the_teacher_script_checks_decay_epochs_and_seeds_too(tmp_path):
    for flags, says in [(["--lr_decay_epochs", "-5"], "--lr_decay_epochs"), (["--seed", str(2 ** 32)], "--seed")]:
        with pytest.raises(UserError) as err:
            train_teacher.parse_option(teacher_args(tmp_path, *flags))
        assert_one_line(err, says)


def test_the_largest_seed_every_generator_accepts_is_accepted(tmp_path):
    assert train_student.parse_option(student_args(tmp_path, "t.pth", "--seed", str(2 ** 32 - 1))).seed == 2 ** 32 - 1
    assert train_student.parse_option(student_args(tmp_path, "t.pth", "-b", "0")).beta == 0


@needs_fmnist
def test_a_refused_start_leaves_no_run_folder(tmp_path, teacher):
    code, stderr = cli("train_student.py", *student_args(tmp_path, teacher, "-b", "nan"))
    assert_error_line(code, stderr, 2, "--beta must be a finite number >= 0, got nan")
    assert not (tmp_path / "student").exists() and not (tmp_path / "tb").exists()


# ---- the data: batches, classes, empty and incomplete Fashion-MNIST folders ----------------------------------------
@needs_fmnist
def test_a_method_needing_full_batches_without_one_full_batch_is_refused_at_start_up(tmp_path, teacher):
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, "--distill", "semckd", "--subset", "20"))
    assert_one_line(err, "--distill semckd", "--subset", "--batch_size 32")
    assert not (tmp_path / "student").exists()


@needs_fmnist
def test_contrastive_distillation_on_a_single_class_is_refused_at_start_up(tmp_path, teacher):
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, "--distill", "crd", "--subset", "1"))
    assert_one_line(err, "--subset", "a single class")
    assert not (tmp_path / "student").exists()


def test_a_fashion_file_with_no_image_is_one_line_naming_it(tmp_path):
    folder = str(tmp_path / "fashion-mnist")
    for name in FASHION_FILES:
        write_fashion_file(folder, name, 0 if name.startswith("train") else 6)
    with pytest.raises(UserError) as err:
        load_fashion_mnist(str(tmp_path), train=True)
    assert_one_line(err, os.path.join(folder, "train-images-idx3-ubyte.gz"), "holds no images")


def test_an_empty_fashion_training_set_ends_the_script_with_one_line(tmp_path, teacher):
    folder = str(tmp_path / "fashion-mnist")
    for name in FASHION_FILES:
        write_fashion_file(folder, name, 0 if name.startswith("train") else 6)
    code, stderr = cli("train_student.py", *student_args(tmp_path, teacher, "--data_root", str(tmp_path)))
    assert_error_line(code, stderr, 2, "train-images-idx3-ubyte.gz", "holds no images")
    assert not (tmp_path / "student").exists()


@needs_fmnist
def test_an_incomplete_fashion_folder_is_refused_naming_the_missing_files(tmp_path):
    folder = str(tmp_path / "fashion-mnist")
    for name in FASHION_FILES[:2]:
        write_fashion_file(folder, name, 6)
    with pytest.raises(UserError) as err:
        load_fashion_mnist(str(tmp_path), train=True)
    assert_one_line(err, folder, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    assert "train-images" not in str(err.value)


@needs_fmnist
def test_the_log_names_the_fashion_folder_actually_read(tmp_path, caplog):
    caplog.set_level("INFO", logger="kd")
    opt = SimpleNamespace(dataset="fashion_mnist", data_root=str(tmp_path), subset=10, test_subset=10, device="cpu")
    build_loaders(opt)
    assert f"Fashion-MNIST read from {FMNIST}" in caplog.text
    caplog.clear()
    folder = str(tmp_path / "fashion-mnist")
    for name in FASHION_FILES:
        write_fashion_file(folder, name, 6)
    build_loaders(opt)
    assert f"Fashion-MNIST read from {folder}" in caplog.text and FMNIST not in caplog.text


# ---- the teacher checkpoint: recorded fields' types, finite weights ------------------------------------------------
def save_teacher(tmp_path, **fields):
    path = tmp_path / "teacher.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10, **fields}, path)
    return str(path)


@pytest.mark.parametrize("fields,says", [({"arch": ["resnet8"]}, "arch ['resnet8']"),
                                         ({"arch": "resnet9"}, "arch 'resnet9'"),
                                         ({"num_classes": "10"}, "num_classes '10'"),
                                         ({"num_classes": True}, "num_classes True")],
                         ids=["arch-list", "arch-unknown", "classes-string", "classes-bool"])
def test_a_teacher_checkpoint_with_a_mistyped_field_is_one_line_naming_it(tmp_path, fields, says):
    path = save_teacher(tmp_path, **fields)
    with pytest.raises(UserError) as err:
        load_teacher(path, 10, torch.device("cpu"))
    assert_one_line(err, f"--path_t {path}", says)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_teacher_with_non_finite_weights_is_refused_at_load(tmp_path, value):
    state = build_model("resnet8", 10).state_dict()
    state["fc.weight"][0, 0] = value
    path = tmp_path / "teacher.pth"
    torch.save({"model": state, "arch": "resnet8", "num_classes": 10}, path)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, torch.device("cpu"))
    assert_one_line(err, f"--path_t {path}", "fc.weight", "NaN or inf")


# ---- --plan files ---------------------------------------------------------------------------------------------------
def test_a_binary_plan_file_is_one_line_naming_its_line(tmp_path):
    plan = tmp_path / "plan.bin"
    plan.write_bytes(b"--distill kd\n\xff\xfe\x00\x81 binary\n")
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, "t.pth", "--plan", str(plan)))
    assert_one_line(err, f"--plan {plan} line 2", "UTF-8")


@pytest.mark.parametrize("line", ["--distill kd --plan other.txt", "--distill kd --pla=other.txt"],
                         ids=["plan", "abbreviated"])
def test_a_plan_flag_inside_a_plan_line_is_refused_with_the_line_number(tmp_path, line):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"--distill kd\n# a comment\n{line}\n")
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, "t.pth", "--plan", str(plan)))
    assert_one_line(err, f"--plan {plan} line 3", "--plan")


# ---- speed flags ----------------------------------------------------------------------------------------------------
@needs_fmnist
def test_amp_fp16_on_the_cpu_is_a_start_up_warning(tmp_path, teacher, caplog):
    caplog.set_level("INFO", logger="kd")
    assert train_student.main(student_args(tmp_path, teacher, "--amp", "fp16", "--dry_run")) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--amp fp16" in r.getMessage()]
    assert len(warnings) == 1 and "slower" in warnings[0] and "bf16" in warnings[0], caplog.text
    caplog.clear()
    train_student.main(student_args(tmp_path, teacher, "--amp", "bf16", "--dry_run"))
    assert "slower" not in caplog.text


def test_resume_with_overwrite_is_refused_as_contradictory(tmp_path):
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, "t.pth", "--resume", "--overwrite"))
    assert_one_line(err, "--resume", "--overwrite")
