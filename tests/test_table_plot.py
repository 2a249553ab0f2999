"""The results table (helper.table) and the curve plots (helper.plot), from run folders written as helper.runs
writes them (results.json with the protocol of helper.runs.protocol, log.jsonl through helper.runs.logger.RunLogger,
options.json), plus one real CTKD run on Fashion-MNIST: cells are the mean and sample std computed here, two
protocols are never merged, failed and unfinished runs are listed and never averaged, and the plot is a PNG.
tests/test_table_paper.py covers labels, --select, the formats and the plot's protocol curves."""
import csv
import json
import math
import os
import statistics
import subprocess
import sys

import matplotlib.image
import matplotlib.pyplot as plt
import pytest
import torch

import train_student
import train_teacher
from helper.errors import UserError
from helper.recipes import apply_recipe
from helper.runs import curves
from helper.runs.logger import RunLogger
from helper.runs.protocol import experiment_flags
from helper.tools import plot, table
from models import build_model, model_dict
from tests.student_utils import parse

FMNIST = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHA_A, SHA_B = "a" * 64, "b" * 64


# ---- run folders as helper.runs writes them ----------------------------------------------------------------------
def student_flags(teacher, student, *args, dataset="cifar100"):
    """A student's protocol flags, built as train_student.py builds them (recipe applied for unset flags)."""
    opt = parse("--model_s", student, "--dataset", dataset, *args)
    apply_recipe(opt, teacher, opt.explicit)
    opt.model_t = teacher
    return experiment_flags(opt)


def teacher_flags(model, *args, dataset="cifar100"):
    return experiment_flags(train_teacher.parse_option(["--model", model, "--dataset", dataset, "--device", "cpu",
                                                        *args]))


def write_run(folder, flags, accs, *, teacher_sha=None, seed=0, status="finished", error=None, results=True,
              protocol=True):
    """A run folder: options.json, one log.jsonl record per epoch with test top-1 `accs`, and (unless results is
    False: a run still going or killed) results.json; protocol=False writes results.json as older code did."""
    os.makedirs(folder)
    options = {k: v for k, v in flags.items() if k != "global_batch"}
    options.update(seed=seed, trial=str(seed), print_freq=100, model_path=os.path.dirname(folder))
    if teacher_sha is not None:
        options["path_t"] = f"/teachers/{teacher_sha[:4]}.pth"
    with open(os.path.join(folder, "options.json"), "w") as f:
        json.dump(options, f)
    logger = RunLogger(folder, tb_folder=os.path.join(os.path.dirname(folder), "tb", os.path.basename(folder)))
    for epoch, acc in enumerate(accs, 1):
        logger.log(epoch, {"lr": 0.05, "train_loss": 3.0 / epoch, "train_loss_cls": 2.0 / epoch,
                           "train_loss_div": 1.0 / epoch, "test_acc": acc, "best_acc": max(accs[:epoch])})
    logger.close()
    if not results:
        return folder
    out = {"status": status, "best_acc": max(accs), "best_epoch": accs.index(max(accs)) + 1, "last_acc": accs[-1],
           "last_epoch": len(accs), "epochs": flags["epochs"]}
    if error:
        out["error"] = error
    if protocol:
        out["protocol"] = {"flags": flags, "seed": seed, "trial": str(seed),
                           "environment": {"device": "cpu", "torch": torch.__version__}}
        if teacher_sha is not None:
            out["protocol"]["teacher"] = {"path": options["path_t"], "arch": flags["model_t"], "sha256": teacher_sha,
                                          "accuracy": 79.0}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(out, f)
    return folder


def write_runs(root, name, flags, acc_lists, teacher_sha=SHA_A):
    """One finished run per list of per-epoch accuracies (seeds 0, 1, ...), all of one protocol."""
    return [write_run(str(root / f"{name}_{seed}"), flags, accs, teacher_sha=teacher_sha, seed=seed)
            for seed, accs in enumerate(acc_lists)]


# ---- the numbers the table must show, computed here ----------------------------------------------------------------
def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def expected_cell(acc_lists, select="last"):
    """`mean ± std (n=N)` of the last-epoch (select="best": best-epoch) top-1 over runs given by their per-epoch
    accuracies; `median (n=N)` of the last-epoch top-1 for select="median"."""
    values = [max(a) if select == "best" else a[-1] for a in acc_lists]
    if select == "median":
        return f"{statistics.median(values):.2f} (n={len(values)})"
    std = f"{sample_std(values):.2f}" if len(values) > 1 else "-"
    return f"{sum(values) / len(values):.2f} ± {std} (n={len(values)})"


def student_cells(text, dataset, bold=False):
    """{(row, column): cell} of the Markdown student table of `dataset` (the bold marks kept when `bold`)."""
    lines = text.splitlines()
    start = next(i for i in range(lines.index(f"## Students on {dataset}"), len(lines))
                 if lines[i].startswith("|"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    cells = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        values = [c.strip() if bold else c.strip().replace("**", "") for c in line.strip("|").split("|")]
        cells.update({(values[0], column): value for column, value in zip(header[1:], values[1:]) if value})
    return cells


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


KD_RUNS = [[60.0, 74.3, 74.1], [61.0, 74.9, 74.5], [59.0, 73.6, 73.6]]  # n and n-1 differ in the 2nd decimal


def test_cells_are_mean_and_sample_std_of_last_and_best_top1(tmp_path):
    kd = write_runs(tmp_path / "student", "kd", student_flags("resnet32x4", "resnet8x4", "--distill", "kd"), KD_RUNS)
    crd_runs = [[70.0, 75.2]]
    write_runs(tmp_path / "student", "crd", student_flags("resnet32x4", "resnet8x4", "--distill", "crd"), crd_runs)
    text, rows = table.build([str(tmp_path / "student")])
    cells = student_cells(text, "cifar100")
    assert cells == {("resnet32x4 -> resnet8x4", "kd"): expected_cell(KD_RUNS),
                     ("resnet32x4 -> resnet8x4", "crd"): expected_cell(crd_runs)}
    assert expected_cell(KD_RUNS) == "74.07 ± 0.45 (n=3)"  # population std: 0.37
    assert expected_cell(KD_RUNS, "best") == "74.27 ± 0.65 (n=3)"  # population std: 0.53
    assert "mean ± sample std (n-1; '-' for one run)" in text
    row = next(r for r in rows if r["label"] == "kd")
    last, best = [a[-1] for a in KD_RUNS], [max(a) for a in KD_RUNS]
    assert row["n"] == 3 and row["folders"].split(";") == kd
    assert float(row["last_mean"]) == pytest.approx(sum(last) / 3, abs=1e-4)
    assert float(row["last_std"]) == pytest.approx(sample_std(last), abs=1e-4)
    assert float(row["best_mean"]) == pytest.approx(sum(best) / 3, abs=1e-4)
    assert float(row["best_std"]) == pytest.approx(sample_std(best), abs=1e-4)


def test_protocols_that_differ_are_never_merged(tmp_path):
    root = tmp_path / "student"
    t4 = [[73.0, 74.0], [73.5, 74.4]]
    t2 = [[71.0, 72.0], [71.5, 72.9]]
    other_teacher = [[75.0, 76.0]]
    write_runs(root, "kd_T4", student_flags("resnet32x4", "resnet8x4", "--distill", "kd"), t4)
    write_runs(root, "kd_T2", student_flags("resnet32x4", "resnet8x4", "--distill", "kd", "--kd_T", "2"), t2)
    write_runs(root, "kd_teacherB", student_flags("resnet32x4", "resnet8x4", "--distill", "kd"), other_teacher,
               teacher_sha=SHA_B)
    ctkd = [[74.0, 75.0]]
    write_runs(root, "ctkd", student_flags("resnet32x4", "resnet8x4", "--distill", "kd", "--have_mlp", "1"), ctkd)
    fmnist = [[80.0, 81.0]]
    write_runs(root, "fmnist", student_flags("resnet32x4", "resnet8x4", "--distill", "kd", dataset="fashion_mnist"),
               fmnist)
    text, rows = table.build([str(root)])
    cells = student_cells(text, "cifar100")
    pair = "resnet32x4 -> resnet8x4"
    assert cells == {(pair, "kd (teacher aaaaaaaa)"): expected_cell(t4),  # the recipe's --kd_T 4: not named
                     (pair, "kd (--kd_T 2)"): expected_cell(t2),
                     (pair, "kd (teacher bbbbbbbb)"): expected_cell(other_teacher),
                     (pair, "kd+ctkd:global"): expected_cell(ctkd)}
    assert student_cells(text, "fashion_mnist") == {(pair, "kd"): expected_cell(fmnist)}
    assert sorted(r["n"] for r in rows) == [1, 1, 1, 2, 2]
    assert sum(len(r["folders"].split(";")) for r in rows) == 7  # every run counted once


def test_failed_and_unfinished_runs_are_listed_not_averaged(tmp_path):
    root = tmp_path / "student"
    flags = student_flags("resnet32x4", "resnet8x4", "--distill", "kd")
    finished = [[73.0, 74.0], [73.2, 74.6]]
    write_runs(root, "kd", flags, finished)
    error = "loss became non-finite in epoch 2 by iteration 10 (cls=nan); stopping, the last good checkpoint is kept"
    failed = write_run(str(root / "kd_failed"), flags, [1.0, 1.0], teacher_sha=SHA_A, seed=7, status="failed",
                       error=error)
    running = write_run(str(root / "kd_running"), flags, [1.0, 1.0, 1.0], teacher_sha=SHA_A, seed=8, results=False)
    text, rows = table.build([str(root)])
    assert student_cells(text, "cifar100") == {("resnet32x4 -> resnet8x4", "kd"): expected_cell(finished)}
    listed = text.split("Not averaged (unfinished, failed or damaged):")[1].splitlines()
    assert f"- {failed}: failed: {error}" in listed
    assert (f"- {running}: unfinished: no results.json (still running, or stopped): log.jsonl reaches epoch 3 of "
            f"{flags['epochs']}") in listed
    by_status = {r["status"]: r for r in rows}
    assert by_status["failed"]["folders"] == failed and by_status["failed"]["reason"] == error
    assert by_status["unfinished"]["folders"] == running and by_status["unfinished"]["n"] == 0
    assert by_status["finished"]["n"] == 2


def test_folders_older_than_the_protocol_group_by_options_json(tmp_path):
    root = tmp_path / "student"
    flags = student_flags("resnet32x4", "resnet8x4", "--distill", "kd")
    old = [[72.0, 73.0], [72.5, 73.1]]
    for seed, accs in enumerate(old):  # seeds, trials and paths differ: still one protocol
        write_run(str(root / f"old_{seed}"), flags, accs, teacher_sha=SHA_A, seed=seed, protocol=False)
    other = [[70.0, 71.0]]
    write_run(str(root / "old_T2"), student_flags("resnet32x4", "resnet8x4", "--distill", "kd", "--kd_T", "2"),
              other[0], teacher_sha=SHA_A, protocol=False)
    cells = student_cells(table.build([str(root)])[0], "cifar100")
    assert cells == {("resnet32x4 -> resnet8x4", "kd"): expected_cell(old),
                     ("resnet32x4 -> resnet8x4", "kd (--kd_T 2)"): expected_cell(other)}


def test_teacher_table_and_published_numbers(tmp_path):
    models, students = tmp_path / "models", tmp_path / "student"
    teachers = [[78.0, 79.1], [78.5, 79.6], [78.2, 79.0]]
    for trial, accs in enumerate(teachers):
        write_run(str(models / f"resnet32x4_cifar100_trial_{trial}"), teacher_flags("resnet32x4"), accs, seed=trial)
    write_run(str(models / "resnet8x4_cifar100_trial_0"), teacher_flags("resnet8x4"), [71.0, 72.0])
    write_run(str(models / "resnet8x4_fmnist_trial_0"), teacher_flags("resnet8x4", dataset="fashion_mnist"), [90.0])
    pair = ("resnet32x4", "resnet8x4")
    write_runs(students, "kd", student_flags(*pair, "--distill", "kd"), KD_RUNS)
    write_runs(students, "crdkd", student_flags(*pair, "--distill", "crd", "-a", "1"), [[75.0, 75.5]])
    write_runs(students, "dkd", student_flags(*pair, "--distill", "dkd"), [[76.0, 76.1]])
    write_runs(students, "ctkd", student_flags("resnet56", "resnet20", "--distill", "kd", "--have_mlp", "1"),
               [[70.0, 71.0]])
    write_runs(students, "kd_ls", student_flags(*pair, "--distill", "kd", "--logit_stand"), [[76.0, 76.2]])
    table.main([str(students), str(models), "--paper", "--csv", str(tmp_path / "out" / "table.csv")])
    text = table.build([str(students), str(models)], with_paper=True)[0]
    cells = student_cells(text, "cifar100")
    row = "resnet32x4 -> resnet8x4"
    assert cells[(row, "kd")] == expected_cell(KD_RUNS) + " · paper 73.33"
    assert cells[(row, "crd (-a 1)")] == expected_cell([[75.0, 75.5]]) + " · paper (crd+kd) 75.46?"  # second-hand
    assert cells[(row, "dkd")] == expected_cell([[76.0, 76.1]]) + " · paper 76.32"
    ctkd = cells[("resnet56 -> resnet20", "kd+ctkd:global")]
    assert ctkd == expected_cell([[70.0, 71.0]]) + " · paper (kd+ctkd) 71.19"
    assert cells[(row, "kd+ls")] == expected_cell([[76.0, 76.2]])  # no published number for this variant
    assert f"| resnet32x4 | cifar100 | 0.05 | 0.0005 | 240 | {expected_cell(teachers)} | 79.42 |" in text
    assert f"| resnet8x4 | cifar100 | 0.05 | 0.0005 | 240 | {expected_cell([[71.0, 72.0]])} | 72.50 |" in text
    assert f"| resnet8x4 | fashion_mnist | 0.05 | 0.0005 | 240 | {expected_cell([[90.0]])} |  |" in text
    assert "RepDistiller README" in text and "mdistiller README" in text
    assert not (students / "table.csv").exists() and not (models / "table.csv").exists()  # nothing in run folders
    rows = read_csv(tmp_path / "out" / "table.csv")
    by_label = {(r["kind"], r["model"], r["label"], r["dataset"]): r for r in rows}
    crd = by_label[("student", "resnet8x4", "crd (-a 1)", "cifar100")]
    assert (crd["paper"], crd["paper_method"], crd["paper_verified"]) == ("75.46", "crd+kd", "false")
    assert by_label[("teacher", "resnet32x4", "resnet32x4", "cifar100")]["n"] == "3"
    assert by_label[("teacher", "resnet32x4", "resnet32x4", "cifar100")]["paper"] == "79.42"
    assert "paper" not in table.build([str(students)])[0]  # only with --paper


def test_paper_numbers_are_well_formed():
    for paper_set in table.PAPER + [table.PAPER_VANILLA]:
        assert paper_set.source
        for (teacher, student), numbers in paper_set.numbers.items():
            assert teacher in model_dict and (student == "" or student in model_dict)
            assert all(50.0 < v < 90.0 for v in numbers.values())
    assert table.paper_number(("resnet32x4", "resnet8x4"), "crd", table.PAPER)[0] == 75.51
    assert table.paper_number(("wrn_40_2", "wrn_40_1"), "fsp", table.PAPER) is None  # n/a in the paper


def test_one_line_errors_for_missing_or_empty_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        table.main([str(tmp_path / "nowhere")])
    (tmp_path / "empty" / "tb").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no run folder"):
        table.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="does not exist"):
        plot.main([str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="holds no run"):
        plot.main([str(tmp_path / "empty")])
    result = subprocess.run([sys.executable, "-m", "helper.plot", str(tmp_path / "nowhere")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nowhere'} does not exist"


@pytest.fixture(scope="module")
def ctkd_run(tmp_path_factory):
    """A real 2-epoch KD + CTKD run of train_student.py on 200 Fashion-MNIST images (random resnet8 teacher)."""
    if not os.path.isdir(FMNIST):
        pytest.skip("apt-get install dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("ctkd")
    torch.manual_seed(7)
    teacher = root / "resnet8_teacher.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10}, teacher)
    train_student.main(["--path_t", str(teacher), "--model_s", "resnet8", "--dataset", "fashion_mnist", "--subset",
                        "200", "--test_subset", "100", "--batch_size", "64", "--epochs", "2", "--device", "cpu",
                        "--num_workers", "0", "--no_progress", "--model_path", str(root / "student"), "--tb_path",
                        str(root / "tb"), "--distill", "kd", "--have_mlp", "1", "--mlp_name", "global"])
    (folder,) = (root / "student").iterdir()
    return folder


def test_a_real_run_in_the_table(ctkd_run):
    with open(ctkd_run / "results.json") as f:
        results = json.load(f)
    cells = student_cells(table.build([str(ctkd_run.parent)])[0], "fashion_mnist")
    assert cells == {("resnet8 -> resnet8", "kd+ctkd:global"): f"{results['last_acc']:.2f} ± - (n=1)"}


def test_plot_writes_a_png_with_every_panel(ctkd_run, tmp_path):
    kd = write_runs(tmp_path / "student", "kd", student_flags("resnet32x4", "resnet8x4", "--distill", "kd"), KD_RUNS)
    fig = curves.draw_runs([str(ctkd_run), kd[0]])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    plt.close(fig)
    assert titles[:2] == ["test top-1", "training loss"]
    assert sum(t.startswith("loss terms: ") for t in titles) == 2
    ctkd_label = curves.short_labels([str(ctkd_run), kd[0]])[0]
    assert [t for t in titles if t.startswith("CTKD")] == [f"CTKD temperature: {ctkd_label}"]
    out = curves.plot_runs([str(ctkd_run), kd[0]], str(tmp_path / "figs" / "both.png"))
    image = matplotlib.image.imread(out)
    assert os.path.getsize(out) > 0 and image.shape[0] > 100 and image.shape[1] > 100
    assert plot.main([str(ctkd_run)]) == str(ctkd_run / "curves.png")  # one run: its own curves.png
    assert matplotlib.image.imread(str(ctkd_run / "curves.png")).size > 0
