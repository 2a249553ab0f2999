"""The smaller findings of a researcher's second day (issue 19): each fails without its fix. Fashion-MNIST, CPU."""
import logging
import os
import subprocess
import sys

import pytest

import train_student
from dataset import cifar100
from helper.errors import UserError
from helper.tools import evaluate
from helper.options import student_parser, teacher_parser
from helper.runs.folder import RunFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")


def common(root, teacher, *extra):
    return ["--path_t", teacher, "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "128",
            "--test_subset", "50", "--batch_size", "64", "--epochs", "1", "--device", "cpu", "--num_workers", "0",
            "--no_progress", "--model_path", str(root / "student"), "--tb_path", str(root / "tb"), *extra]


def test_a_finished_run_leaves_no_lock_file_and_a_held_lock_still_refuses(tmp_path):
    first = RunFolder(str(tmp_path / "run")).acquire()
    with pytest.raises(UserError, match=f"in use by another run \\(PID {os.getpid()}\\)"):
        RunFolder(str(tmp_path / "run")).acquire()
    first.release()
    assert os.listdir(tmp_path / "run") == []
    again = RunFolder(str(tmp_path / "run")).acquire()  # the lock is free again, on a new file
    assert os.listdir(tmp_path / "run") == [".lock"]
    again.release()


@needs_data
def test_a_run_ends_without_lock_and_its_log_says_what_the_teacher_was_tested_on(tmp_path, teacher):
    train_student.main(common(tmp_path, teacher))
    (folder,) = (tmp_path / "student").iterdir()
    assert ".lock" not in os.listdir(folder)
    log = (folder / "train.log").read_text()
    assert "accuracy" in log and "on a class-balanced 50 of the test images (--test_subset)" in log
    with pytest.raises(UserError, match="--dataset cifar100, but .* was trained on fashion_mnist; drop --dataset"):
        evaluate.main([str(folder / "resnet8_best.pth"), "--dataset", "cifar100", "--data_root",
                       str(tmp_path / "nothing")])
    assert not (tmp_path / "nothing").exists()


def test_a_failed_cifar100_download_leaves_no_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        os.makedirs(kwargs["download_root"], exist_ok=True)  # torchvision makes the folder before it fails
        raise OSError("network unreachable")
    monkeypatch.setattr(cifar100, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match="CIFAR-100 not found .* download .* failed"):
        cifar100.ensure_cifar100(str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


@needs_data
def test_an_unknown_flag_in_a_plan_line_is_one_line_naming_the_line(tmp_path, teacher, capsys):
    plan = tmp_path / "plan.txt"
    plan.write_text("--distill kd\n--distill crd --nce_kk 5\n")
    with pytest.raises(UserError) as err:
        train_student.main(common(tmp_path, teacher, "--plan", str(plan)))
    assert str(err.value).startswith(f"line 2 of {plan}: unrecognized arguments: --nce_kk 5")
    assert "\n" not in str(err.value) and "usage:" not in capsys.readouterr().err


@needs_data
def test_kd_refuses_a_weight_for_terms_it_does_not_have(tmp_path, teacher):
    with pytest.raises(UserError, match="--distill kd has no loss term of its own: -b 1 would weight nothing"):
        train_student.main(common(tmp_path, teacher, "--distill", "kd", "-b", "1"))
    assert train_student.main(common(tmp_path, teacher, "--distill", "kd", "-b", "0", "--dry_run")) is None
    assert train_student.main(common(tmp_path, teacher, "--distill", "kd,crd", "-b", "0.8", "--dry_run")) is None


@needs_data
def test_a_dkd_warmup_longer_than_the_run_is_said(tmp_path, teacher, caplog):
    with caplog.at_level(logging.WARNING, logger="kd"):
        train_student.main(common(tmp_path, teacher, "--distill", "dkd", "--warmup", "20", "--dry_run"))
    assert "--warmup 20 is longer than the run's --epochs 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kd"):
        train_student.main(common(tmp_path, teacher, "--distill", "dkd", "--warmup", "1", "--dry_run"))
    assert "--warmup" not in caplog.text


def help_text(parser):
    return parser.format_help()


def test_help_states_the_defaults_and_what_the_flags_do():
    text = help_text(student_parser([]))
    for words in ("method (kd)", "(./save/student_model)", "CRD positive mode (exact)", "draws from (1.0)",
                  "refused on another device", "stable hash of it (CRC32)"):
        assert words in " ".join(text.split()), words
    assert "(resnet110)" in help_text(teacher_parser())
    assert "--dkd_alpha" not in help_text(student_parser(["kd"]))  # -h shows the flags of --distill's methods
    assert "--dkd_alpha" in help_text(student_parser(["dkd"])) and "--dkd_alpha" in help_text(student_parser())
    shown = subprocess.run([sys.executable, "train_student.py", "--distill", "dkd", "-h"], cwd=ROOT,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "--dkd_alpha" in shown.stdout and "--nce_k" in shown.stdout
    readme = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    assert "13-19 % faster epochs" in readme and "13-19% faster epochs" in " ".join(text.split())


def test_helper_commands_run_from_any_folder(tmp_path):
    """scripts/setup.sh puts the repository on the environment's path (.venv's kd_repository.pth)."""
    site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(os.path.join(site, "kd_repository.pth")):
        pytest.skip("run `bash scripts/setup.sh`: it installs the path file into the environment")
    result = subprocess.run([sys.executable, "-m", "helper.table", "-h"], cwd=tmp_path, capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
