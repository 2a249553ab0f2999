"""python -m helper.evaluate: our checkpoints give their run's last-epoch accuracy exactly (a SimKD student through
its recorded head); RepDistiller, DDP and torchvision-style files load; per-class and confusion CSVs agree with top-1;
a wrong dataset or an unreadable file is one `error:` line. Fashion-MNIST and a tiny generated ImageNet folder, CPU."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import train_student
import train_teacher
from helper.tools import evaluate
from helper.errors import UserError
from models import build_model
from tests.test_dataset import make_image_folder

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SUBSET = "200"
COMMON = ["--dataset", "fashion_mnist", "--subset", "256", "--test_subset", TEST_SUBSET, "--epochs", "1",
          "--batch_size", "64", "--device", "cpu", "--num_workers", "0", "--no_progress", "--seed", "3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders of a teacher, a KD student and a SimKD student trained for one epoch."""
    root = tmp_path_factory.mktemp("runs")
    train_teacher.main(COMMON + ["--model", "resnet8", "--model_path", str(root / "models"),
                                 "--tb_path", str(root / "tb")])
    teacher = next((root / "models").iterdir())
    folders = {"teacher": teacher}
    for method in ("kd", "simkd"):
        train_student.main(COMMON + ["--path_t", str(teacher / "resnet8_last.pth"), "--model_s", "resnet8",
                                     "--distill", method, "--model_path", str(root / method),
                                     "--tb_path", str(root / "tb")])
        folders[method] = next((root / method).iterdir())
    return folders


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """A generated ImageNet layout: 3 classes, 2 images each in train/ and val/."""
    root = tmp_path_factory.mktemp("imagenet")
    make_image_folder(str(root))
    return str(root)


def last_epoch(folder):
    records = [json.loads(line) for line in open(folder / "log.jsonl")]
    return [r for r in records if r["kind"] == "epoch"][-1]


def run_evaluate(path, *flags):
    """helper.evaluate.main in this process -> its result dict."""
    return evaluate.main([str(path), "--device", "cpu", "--num_workers", "0", *map(str, flags)])


def run_command(*args):
    """`python -m helper.evaluate ...` as a user runs it -> (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "helper.evaluate", *map(str, args), "--device", "cpu",
                           "--num_workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_same_as_logged(result, folder):
    logged = last_epoch(folder)
    assert result["top1"] == logged["test_acc"]
    assert result["top5"] == logged["test_acc_top5"]
    assert result["loss"] == pytest.approx(logged["test_loss"], rel=1e-6)
    assert result["images"] == int(TEST_SUBSET)


@pytest.mark.parametrize("run", ["teacher", "kd"])
def test_our_checkpoint_gives_the_runs_last_epoch_accuracy(runs, run):
    result = run_evaluate(runs[run] / "resnet8_last.pth", "--test_subset", TEST_SUBSET)
    assert_same_as_logged(result, runs[run])
    assert (result["arch"], result["arch_source"]) == ("resnet8", "checkpoint")
    assert (result["dataset"], result["dataset_source"]) == ("fashion_mnist", "checkpoint")
    assert result["head"] is None


def test_simkd_student_is_evaluated_through_its_recorded_head(runs):
    path = runs["simkd"] / "resnet8_last.pth"
    assert torch.load(path, weights_only=True)["eval_head"] == "simkd"
    with_head = run_evaluate(path, "--test_subset", TEST_SUBSET)
    assert with_head["head"] == "simkd"
    assert_same_as_logged(with_head, runs["simkd"])
    bare = run_evaluate(path, "--test_subset", TEST_SUBSET, "--no_head")
    assert bare["head"] is None and "records the simkd head" in bare["head_description"]
    assert (bare["top5"], bare["loss"]) != (with_head["top5"], with_head["loss"])


def test_repdistiller_file_takes_its_arch_from_the_folder_name(runs, tmp_path, capsys):
    weights = torch.load(runs["teacher"] / "resnet8_last.pth", weights_only=True)["model"]
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": weights, "epoch": 240, "accuracy": torch.tensor(70.0)}, path)
    result = run_evaluate(path, "--dataset", "fashion_mnist", "--test_subset", TEST_SUBSET)
    assert_same_as_logged(result, runs["teacher"])
    assert result["arch"] == "resnet8" and "assumed" in result["arch_source"]
    assert result["num_classes"] == 10 and result["recorded_accuracy"] == 70.0
    report = capsys.readouterr().out
    assert "resnet8 (assumed from the folder name resnet8_vanilla)" in report


def test_ddp_file_with_module_prefixes_loads(runs, tmp_path, capsys):
    weights = torch.load(runs["kd"] / "resnet8_last.pth", weights_only=True)["model"]
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    result = run_evaluate(path, "--arch", "resnet8", "--dataset", "fashion_mnist", "--test_subset", TEST_SUBSET,
                          "--json")
    assert_same_as_logged(result, runs["kd"])
    assert result["arch_source"] == "--arch"
    assert json.loads(capsys.readouterr().out) == result  # --json: one machine-readable line


def test_a_file_without_arch_needs_the_flag(runs, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(torch.load(runs["kd"] / "resnet8_last.pth", weights_only=True)["model"], path)
    with pytest.raises(UserError, match="pass --arch"):
        run_evaluate(path, "--dataset", "fashion_mnist")
    with pytest.raises(UserError, match="does not match architecture resnet14"):
        run_evaluate(path, "--dataset", "fashion_mnist", "--arch", "resnet14")


def test_per_class_and_confusion_csvs_agree_with_top1(runs, tmp_path):
    per_class, confusion = tmp_path / "per_class.csv", tmp_path / "confusion.csv"
    result = run_evaluate(runs["teacher"] / "resnet8_last.pth", "--test_subset", TEST_SUBSET,
                          "--per_class", per_class, "--confusion", confusion)
    rows = list(csv.DictReader(open(per_class)))
    assert [int(r["class"]) for r in rows] == list(range(10))
    assert all(int(r["images"]) == 20 for r in rows)  # the test subset is class-balanced
    correct = sum(int(r["correct"]) for r in rows)
    assert 100.0 * correct / result["images"] == pytest.approx(result["top1"])
    matrix = [[int(v) for v in row[1:]] for row in list(csv.reader(open(confusion)))[1:]]
    assert sum(map(sum, matrix)) == result["images"]
    assert [matrix[c][c] for c in range(10)] == [int(r["correct"]) for r in rows]


def test_torchvision_style_state_dict_on_an_imagenet_folder(tmp_path, tiny_imagenet):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pth"
    torch.save(build_model("ResNet18", 3).state_dict(), path)  # a plain state_dict, as torchvision ships
    result = run_evaluate(path, "--arch", "ResNet18", "--dataset", "imagenet", "--data_root", tiny_imagenet,
                          "--batch_size", "2")
    assert result["images"] == 6 and result["top5"] == 100.0  # 3 classes: every label is in the top 5
    assert result["num_classes"] == 3 and result["classes_source"] == "rows of fc.weight"


def assert_one_error_line(code, stderr, *words):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "weights_only" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_wrong_dataset_is_one_line_naming_the_flag(runs, tiny_imagenet):
    code, _, stderr = run_command(runs["teacher"] / "resnet8_last.pth", "--dataset", "imagenet",
                                  "--data_root", tiny_imagenet)
    assert_one_error_line(code, stderr, "--dataset imagenet", "was trained on fashion_mnist", "drop --dataset")


def test_wrong_input_size_is_one_line_naming_the_flag(tmp_path, tiny_imagenet):
    path = tmp_path / "resnet8_cifar.pth"
    torch.save({"model": build_model("resnet8", 3).state_dict(), "arch": "resnet8", "num_classes": 3}, path)
    with pytest.raises(UserError, match="expects 32px inputs but --dataset imagenet gives 224px"):
        run_evaluate(path, "--dataset", "imagenet", "--data_root", tiny_imagenet)


@pytest.mark.parametrize("kind, says", [("garbage", "is not a checkpoint this tool can load safely"), ("directory", "is a directory"),
                                        ("missing", "does not exist")])
def test_unloadable_file_is_one_line_naming_it(tmp_path, kind, says):
    path = tmp_path / "model.pth"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint\n" * 20)
    elif kind == "directory":
        path.mkdir()
    code, stdout, stderr = run_command(path)
    assert_one_error_line(code, stderr, str(path), says)
    assert stdout == ""
