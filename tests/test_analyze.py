"""python -m helper.analyze end to end on Fashion-MNIST (CPU): a resnet8 teacher, a KD student and a from-scratch
student of the same network and data; analysis.json holds every number, the PNGs and the per-class CSV are written;
the KD student agrees with its teacher more than the scratch one does; bad input is one `error:` line."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import train_student
import train_teacher
from helper.errors import UserError
from helper.runs.files import file_sha256
from helper.tools import analyze, evaluate
from models import build_model

FMNIST = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--dataset", "fashion_mnist", "--test_subset", "500", "--batch_size", "64", "--device", "cpu",
          "--num_workers", "0", "--no_progress"]
STUDENT_DATA = ["--subset", "500", "--epochs", "10", "--lr_decay_epochs", "8"]
TEST_IMAGES, TRAIN_IMAGES, TSNE_IMAGES = 1000, 500, 100
FLAGS = ["--device", "cpu", "--num_workers", "0", "--test_subset", str(TEST_IMAGES), "--tsne_samples",
         str(TSNE_IMAGES)]
KEYS = {"checkpoint", "checkpoint_sha256", "teacher_checkpoint", "teacher_sha256", "split", "images", "ece_bins",
        "student", "teacher", "agreement", "kl", "agreement_train", "kl_train", "logit_diff_mean", "logit_diff_max",
        "cka", "cka_last", "files"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """A resnet8 teacher (2000 images, 3 epochs); resnet8 students on 500 images for 10 epochs: one distilled with
    KD alone (-r 0 -a 1 -b 0), one trained from scratch by train_teacher.py."""
    root = tmp_path_factory.mktemp("analyze")
    tb = ["--tb_path", str(root / "tb")]
    train_teacher.main(COMMON + tb + ["--model", "resnet8", "--subset", "2000", "--epochs", "3", "--lr_decay_epochs",
                                      "2", "--model_path", str(root / "models")])
    (teacher_folder,) = (root / "models").iterdir()
    teacher = str(teacher_folder / "resnet8_last.pth")
    train_teacher.main(COMMON + tb + STUDENT_DATA + ["--model", "resnet8", "--model_path", str(root / "scratch")])
    train_student.main(COMMON + tb + STUDENT_DATA + ["--path_t", teacher, "--model_s", "resnet8", "--distill", "kd",
                                                     "-r", "0", "-a", "1", "-b", "0",
                                                     "--model_path", str(root / "student")])
    (scratch,), (kd,) = (root / "scratch").iterdir(), (root / "student").iterdir()
    return {"root": root, "teacher": teacher, "scratch": scratch, "kd": kd}


@pytest.fixture(scope="module")
def analysed(runs):
    """analysis.json of the KD student (its root given: the teacher read from its run, files in its folder) and of
    the scratch student (--teacher, files in --out)."""
    (kd,) = analyze.main([str(runs["root"] / "student"), *FLAGS])
    (scratch,) = analyze.main([str(runs["scratch"]), "--teacher", runs["teacher"], "--out",
                               str(runs["root"] / "scratch_analysis"), *FLAGS])
    return {"kd": kd, "scratch": scratch}


def test_analysis_json_holds_every_number_and_every_file_is_written(runs, analysed):
    kd = analysed["kd"]
    folder = runs["kd"]
    assert json.loads((folder / "analysis.json").read_text()) == kd
    assert KEYS <= set(kd)
    assert kd["checkpoint"] == str(folder / "resnet8_last.pth")
    assert kd["checkpoint_sha256"] == file_sha256(kd["checkpoint"])
    assert (kd["teacher_checkpoint"], kd["teacher_sha256"]) == (runs["teacher"], file_sha256(runs["teacher"]))
    assert (kd["split"], kd["images"], kd["train_images"], kd["ece_bins"]) == ("test", TEST_IMAGES, TRAIN_IMAGES, 15)
    for model in ("student", "teacher"):
        assert set(kd[model]) == {"top1", "ece", "nll", "brier"}
        assert 10 < kd[model]["top1"] <= 100 and 0 <= kd[model]["ece"] <= 100
        assert kd[model]["nll"] > 0 and 0 <= kd[model]["brier"] <= 2
    assert 0 <= kd["agreement"] <= 100 and 0 <= kd["agreement_train"] <= 100 and kd["kl"] >= 0
    assert 0 <= kd["logit_diff_mean"] <= kd["logit_diff_max"]
    assert len(kd["cka"]) == 4 and all(len(row) == 4 for row in kd["cka"])  # resnet8: stem + 3 stages each
    assert kd["cka_last"] == kd["cka"][-1][-1] and all(-0.1 < v <= 1 + 1e-9 for row in kd["cka"] for v in row)
    assert kd["tsne_images"] == TSNE_IMAGES
    assert set(kd["files"]) == {"reliability", "logit_diff", "cka", "tsne", "per_class"}
    for key in ("reliability", "logit_diff", "cka", "tsne"):
        image = (folder / kd["files"][key]).read_bytes()
        assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000, key  # a drawn figure, not a blank one
    rows = list(csv.DictReader(open(folder / kd["files"]["per_class"])))
    assert [int(r["class"]) for r in rows] == list(range(10))
    assert sum(int(r["test_images"]) for r in rows) == TEST_IMAGES
    assert sum(int(r["train_images"]) for r in rows) == TRAIN_IMAGES


def test_student_top1_is_what_helper_evaluate_measures(runs, analysed):
    evaluated = evaluate.main([str(runs["kd"] / "resnet8_last.pth"), "--device", "cpu", "--num_workers", "0",
                               "--test_subset", str(TEST_IMAGES)])
    # the same images, preprocessed by the same float32 operations: at most a near-tie's argmax may differ
    assert analysed["kd"]["student"]["top1"] == pytest.approx(evaluated["top1"], abs=100 / TEST_IMAGES)


def test_kd_student_agrees_with_its_teacher_more_than_a_scratch_student(runs, analysed):
    kd, scratch = analysed["kd"], analysed["scratch"]
    numbers = {name: (r["agreement"], r["agreement_train"], r["kl"], r["student"]["top1"])
               for name, r in analysed.items()}
    assert kd["agreement"] > scratch["agreement"] and kd["agreement_train"] > scratch["agreement_train"], numbers
    assert kd["kl"] < scratch["kl"] and kd["kl_train"] < scratch["kl_train"], numbers
    assert scratch["teacher"] == kd["teacher"]  # --teacher and the run's record name the same file: the same numbers
    assert scratch["teacher_source"] == "--teacher" and kd["teacher_source"] == "the student's run"
    assert (runs["root"] / "scratch_analysis" / "analysis.json").is_file()  # --out: not in the run folder
    assert not (runs["scratch"] / "analysis.json").exists()


def test_a_changed_teacher_is_refused_unless_named_with_teacher(runs, tmp_path):
    ckpt = torch.load(runs["kd"] / "resnet8_last.pth", weights_only=True)
    ckpt["teacher_sha256"] = "0" * 64
    os.makedirs(tmp_path / "moved")
    torch.save(ckpt, tmp_path / "moved" / "resnet8_last.pth")
    with pytest.raises(UserError, match=r"its teacher .* has changed since the run .*pass --teacher"):
        analyze.main([str(tmp_path / "moved" / "resnet8_last.pth"), *FLAGS])
    (result,) = analyze.main([str(tmp_path / "moved" / "resnet8_last.pth"), "--teacher", runs["teacher"],
                              "--test_subset", "100", "--train_subset", "50", "--tsne_samples", "20",
                              "--tsne_classes", "2,5", "--ece_bins", "10", "--split", "train", "--device", "cpu",
                              "--num_workers", "0"])
    assert (result["split"], result["images"], result["test_images"], result["ece_bins"]) == ("train", 50, 100, 10)
    assert result["tsne_classes"] == [2, 5] and result["tsne_images"] == 10  # 50 images: 5 of each class
    assert os.path.isfile(tmp_path / "moved" / "analysis_train.json")
    assert result["files"]["cka"] == "analysis_train_cka.png"


def test_bad_input_is_one_line_naming_the_flag_or_file(runs, tmp_path):
    scratch = str(runs["scratch"])
    with pytest.raises(UserError, match="records no teacher .*pass --teacher"):
        analyze.main([scratch, *FLAGS])
    with pytest.raises(UserError, match="holds no student run .*pass --teacher"):
        analyze.main([str(runs["root"] / "models"), *FLAGS])
    with pytest.raises(UserError, match="does not exist"):
        analyze.main([str(tmp_path / "nothing"), *FLAGS])
    cifar = tmp_path / "cifar_teacher.pth"
    torch.save({"model": build_model("resnet8", 100).state_dict(), "arch": "resnet8", "num_classes": 100,
                "dataset": "cifar100"}, cifar)
    with pytest.raises(UserError, match=f"--teacher {cifar} was trained on cifar100, the student on fashion_mnist"):
        analyze.main([scratch, "--teacher", str(cifar), *FLAGS])
    classes = tmp_path / "hundred_classes.pth"
    torch.save({"model": build_model("resnet8", 100).state_dict(), "arch": "resnet8", "num_classes": 100}, classes)
    with pytest.raises(UserError, match="classifies 100 classes, the student 10"):
        analyze.main([scratch, "--teacher", str(classes), *FLAGS])
    broken = tmp_path / "data" / "fashion-mnist"
    broken.mkdir(parents=True)
    shutil.copy(os.path.join(FMNIST, sorted(os.listdir(FMNIST))[0]), broken)
    with pytest.raises(UserError, match="Fashion-MNIST folder .* is incomplete"):
        analyze.main([scratch, "--teacher", runs["teacher"], "--data_root", str(tmp_path / "data"), *FLAGS])
    with pytest.raises(UserError, match="--tsne_classes 3,3: class indices must be distinct"):
        analyze.main([scratch, "--teacher", runs["teacher"], "--tsne_classes", "3,3", *FLAGS])
    done = subprocess.run([sys.executable, "-m", "helper.analyze", scratch, "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: {scratch}/resnet8_last.pth records no teacher (a "
                                                 "train_teacher.py run?); pass --teacher T to compare it with one"]


def test_analyze_at_the_end_of_a_run_writes_its_analysis(tmp_path, teacher):
    """train_student.py --analyze: the run folder holds analysis.json and its figures once training has ended."""
    train_student.main(["--path_t", teacher, "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset", "128",
                        "--test_subset", "60", "--batch_size", "64", "--epochs", "1", "--device", "cpu",
                        "--num_workers", "0", "--no_progress", "--model_path", str(tmp_path / "student"),
                        "--tb_path", str(tmp_path / "tb"), "--analyze"])
    (folder,) = (tmp_path / "student").iterdir()
    result = json.load(open(folder / "analysis.json"))
    assert result["images"] == 60 and 0 <= result["agreement"] <= 100
    assert all((folder / name).stat().st_size > 0 for name in result["files"].values())
