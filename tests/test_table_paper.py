"""helper.table and helper.plot as a paper needs them (issue 19): one protocol has one label on every row, a lone
variant is labelled by what differs from its recipe, another method's flag does not split a method, a seed run twice
counts once; --select, the LaTeX and CSV formats, --with_baselines, --columns, --out/--csv; helper.plot on the root
helper.table takes, with per-protocol mean curves and ± std bands. Run folders are written by hand as helper.runs
writes them (tests/test_table_plot.py's helpers), named as helper.naming names them."""
import csv
import io
import itertools
import json
import os
import re
import statistics

import matplotlib.pyplot as plt
import pytest

from helper import naming
from helper.errors import UserError
from helper.recipes import apply_recipe
from helper.runs import curves
from helper.runs.protocol import experiment_flags
from helper.tools import plot, table
from tests.student_utils import parse
from tests.test_table_plot import (
    SHA_A,
    expected_cell,
    read_csv,
    sample_std,
    student_cells,
    student_flags,
    teacher_flags,
    write_run,
    write_runs,
)

FMNIST = "fashion_mnist"
QUICK = ("--epochs", "3", "--test_subset", "2000")  # flags every student of these tables shares
KD = [[60.0, 70.0, 71.0], [61.0, 70.5, 72.5], [59.5, 71.0, 71.5]]
CRD = [[62.0, 72.0, 73.0], [62.5, 71.0, 72.0]]


def student(teacher, model_s, *args):
    return student_flags(teacher, model_s, *args, *QUICK, dataset=FMNIST)


def quickstart_like(root):
    """KD on resnet20 -> resnet8 and -> resnet14 (one protocol), CRD+KD (-a 1 --nce_k 1024) on resnet8."""
    write_runs(root, "kd8", student("resnet20", "resnet8", "--distill", "kd"), KD)
    write_runs(root, "kd14", student("resnet20", "resnet14", "--distill", "kd"), KD[:2])
    write_runs(root, "crd8", student("resnet20", "resnet8", "--distill", "crd", "-a", "1", "--nce_k", "1024"), CRD)


def runs_in(root):
    """What `root/*` names, less the TensorBoard folder write_run puts beside the runs."""
    return sorted(str(p) for p in root.iterdir() if p.is_dir() and p.name != "tb")


def columns_of(text, dataset=FMNIST):
    """The header of the Markdown student table of `dataset`."""
    lines = text.splitlines()
    start = next(i for i in range(lines.index(f"## Students on {dataset}"), len(lines)) if lines[i].startswith("|"))
    return [c.strip() for c in lines[start].strip("|").split("|")]


# ---- labels --------------------------------------------------------------------------------------------------------
def test_one_protocol_has_one_label_on_every_row_and_shared_flags_go_in_the_heading(tmp_path):
    quickstart_like(tmp_path)
    write_runs(tmp_path, "kd8_T2", student("resnet20", "resnet8", "--distill", "kd", "--kd_T", "2"), KD[:1])
    text, _ = table.build([str(tmp_path)])
    cells = student_cells(text, FMNIST)
    assert cells[("resnet20 -> resnet8", "kd")] == expected_cell(KD)
    assert cells[("resnet20 -> resnet14", "kd")] == expected_cell(KD[:2])
    assert cells[("resnet20 -> resnet8", "kd (--kd_T 2)")] == expected_cell(KD[:1])
    assert columns_of(text) == ["teacher -> student", "kd", "kd (--kd_T 2)", "crd (-a 1 --nce_k 1024)"]
    assert "All runs: --epochs 3 --test_subset 2000." in text.splitlines()


def test_a_lone_variant_is_labelled_by_what_differs_from_its_recipe(tmp_path):
    quickstart_like(tmp_path)
    cells = student_cells(table.build([str(tmp_path)])[0], FMNIST)
    assert cells[("resnet20 -> resnet8", "crd (-a 1 --nce_k 1024)")] == expected_cell(CRD)
    assert not any(column == "crd" for _, column in cells)


def test_another_methods_flag_does_not_split_a_method(tmp_path):
    write_run(str(tmp_path / "kd_0"), student("resnet20", "resnet8", "--distill", "kd"), KD[0], teacher_sha=SHA_A)
    write_run(str(tmp_path / "kd_nce_1"), student("resnet20", "resnet8", "--distill", "kd", "--nce_k", "1024"), KD[1],
              teacher_sha=SHA_A, seed=1)
    text, rows = table.build([str(tmp_path)])
    assert student_cells(text, FMNIST) == {("resnet20 -> resnet8", "kd"): expected_cell(KD[:2])}
    assert [r["n"] for r in rows] == [2]


def test_a_seed_run_twice_counts_once_and_is_reported(tmp_path):
    kept = write_runs(tmp_path, "kd", student("resnet20", "resnet8", "--distill", "kd"), KD[:2])
    rerun = write_run(str(tmp_path / "rerun_of_seed_0"), student("resnet20", "resnet8", "--distill", "kd"), KD[0],
                      teacher_sha=SHA_A, seed=0)
    text, rows = table.build([str(tmp_path)])
    assert student_cells(text, FMNIST) == {("resnet20 -> resnet8", "kd"): expected_cell(KD[:2])}
    reason = f"same protocol and seed 0 as {kept[0]}; counted once"
    assert f"- {rerun}: {reason}" in text.splitlines()
    by_status = {r["status"]: r for r in rows}
    assert by_status["finished"]["n"] == 2 and by_status["finished"]["folders"].split(";") == kept
    assert (by_status["duplicate"]["folders"], by_status["duplicate"]["reason"]) == (rerun, reason)


def test_a_sweep_has_one_column_per_setting_with_every_seed(tmp_path):
    """--kd_T 2,4,8 x --learning_rate 0.05,0.01 x two seeds, in folders named as train_student.py names them."""
    settings = list(itertools.product(["2", "4", "8"], ["0.05", "0.01"]))
    for (kd_t, lr), trial in itertools.product(settings, ["0", "1"]):
        opt = parse("--model_s", "resnet8", "--dataset", FMNIST, "--distill", "kd", "--kd_T", kd_t,
                    "--learning_rate", lr, "--trial", trial, *QUICK)
        apply_recipe(opt, "resnet20", opt.explicit)
        opt.model_t = "resnet20"
        accs = [60.0, 65.0 + float(kd_t) + float(lr) * 10 + int(trial)]
        write_run(str(tmp_path / naming.student_run_name(opt, "resnet20")), experiment_flags(opt), accs,
                  teacher_sha=SHA_A, seed=opt.seed)
    assert "S=resnet8_T=resnet20_fashion_mnist_kd_r=0.1_a=0.9_b=0_epochs=3_kd_T=2_lr=0.01_test_subset=2000_1" in \
        os.listdir(tmp_path)
    text, rows = table.build([str(tmp_path)])
    cells = student_cells(text, FMNIST)
    assert len(cells) == 6 and all(cell.endswith("(n=2)") for cell in cells.values())
    labels = {column for _, column in cells}
    assert labels == {"kd", "kd (--kd_T 2)", "kd (--kd_T 8)", "kd (--learning_rate 0.01)",
                      "kd (--kd_T 2 --learning_rate 0.01)", "kd (--kd_T 8 --learning_rate 0.01)"}
    last = [65.0 + 2 + 0.1, 65.0 + 2 + 0.1 + 1]  # --kd_T 2 --learning_rate 0.01, trials 0 and 1
    assert cells[("resnet20 -> resnet8", "kd (--kd_T 2 --learning_rate 0.01)")] == \
        f"{statistics.fmean(last):.2f} ± {sample_std(last):.2f} (n=2)"
    assert sorted(int(r["n"]) for r in rows) == [2] * 6


# ---- --select ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("select", ["last", "best", "median"])
def test_select_picks_the_number_of_each_cell(tmp_path, select):
    quickstart_like(tmp_path)
    text, rows = table.build([str(tmp_path)], select=select)
    cells = student_cells(text, FMNIST)
    assert cells[("resnet20 -> resnet8", "kd")] == expected_cell(KD, select)
    assert cells[("resnet20 -> resnet8", "crd (-a 1 --nce_k 1024)")] == expected_cell(CRD, select)
    assert f"--select {select}: " in text.splitlines()[0]
    values = [max(a) if select == "best" else a[-1] for a in KD]
    number = statistics.median(values) if select == "median" else statistics.fmean(values)
    row = next(r for r in rows if r["label"] == "kd" and r["model"] == "resnet8")
    assert (row["select"], float(row["value"])) == (select, pytest.approx(number, abs=1e-4))
    assert row["std"] == ("" if select == "median" else f"{sample_std(values):.4f}")


def test_median_of_an_even_number_of_runs_is_the_middle_mean(tmp_path):
    runs = KD + [[50.0, 60.0, 80.0]]  # last top-1: 71.0, 72.5, 71.5, 80.0 -> (71.5 + 72.5) / 2
    write_runs(tmp_path, "kd", student("resnet20", "resnet8", "--distill", "kd"), runs)
    cells = student_cells(table.build([str(tmp_path)], select="median")[0], FMNIST)
    assert cells == {("resnet20 -> resnet8", "kd"): "72.00 (n=4)"}


# ---- formats -------------------------------------------------------------------------------------------------------
def balanced(text):
    """Whether the unescaped braces of `text` nest."""
    depth = 0
    for char in re.sub(r"\\[{}]", "", text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_booktabs_with_the_markdown_numbers_and_the_best_in_bold(tmp_path):
    quickstart_like(tmp_path)
    markdown = table.build([str(tmp_path)])[0]
    latex = table.build([str(tmp_path)], fmt="latex")[0]
    assert balanced(latex)
    assert [line.strip() for line in latex.splitlines() if line.strip() in (r"\toprule", r"\midrule", r"\bottomrule")] \
        == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert re.search(r"\\begin\{tabular\}\{lcc\}", latex) and r"\end{tabular}" in latex
    tex_lines = [line for line in latex.splitlines() if not line.startswith("%")]  # comments: the notes
    assert not any(re.search(r"(?<!\\)_", line) for line in tex_lines)  # every _ escaped
    body = [line.strip() for line in latex.splitlines() if line.strip().endswith(r"\\")]
    assert body[0] == r"teacher $\rightarrow$ student & kd & crd (-a 1 -{}-nce\_k 1024) \\"
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line[:-2].split("&")] for line in body[1:])}
    cells = student_cells(markdown, FMNIST)
    for name, texts in rows.items():
        pair = name.replace(r" $\rightarrow$ ", " -> ")
        for column, tex_cell in zip(["kd", "crd (-a 1 --nce_k 1024)"], texts):
            plain = tex_cell.replace(r"\textbf{", "").replace("}", "").replace(r"$\pm$", "±")
            assert plain == cells.get((pair, column), "")
    assert rows[r"resnet20 $\rightarrow$ resnet8"][1].startswith(r"\textbf{72.50 $\pm$ 0.71}")  # CRD beats KD
    assert not rows[r"resnet20 $\rightarrow$ resnet14"][0].startswith(r"\textbf")  # one method: nothing to beat
    bold = student_cells(markdown, FMNIST, bold=True)
    assert bold[("resnet20 -> resnet8", "crd (-a 1 --nce_k 1024)")] == "**72.50 ± 0.71** (n=2)"
    assert bold[("resnet20 -> resnet8", "kd")] == expected_cell(KD)


def test_csv_format_prints_the_rows_of_the_table(tmp_path, capsys):
    quickstart_like(tmp_path)
    table.main([str(tmp_path), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted((r["model"], r["label"], r["n"]) for r in rows) == [
        ("resnet14", "kd", "2"), ("resnet8", "crd (-a 1 --nce_k 1024)", "2"), ("resnet8", "kd", "3")]


# ---- --with_baselines ----------------------------------------------------------------------------------------------
def set_teacher_path(folder, path):
    """Record `path` as the student's teacher file (results.json protocol.teacher.path)."""
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    results["protocol"]["teacher"]["path"] = path
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)


def test_with_baselines_puts_the_teacher_and_the_scratch_student_on_each_row(tmp_path):
    students, models = tmp_path / "student", tmp_path / "models"
    quickstart_like(students)
    teachers = [[80.0, 90.0, 91.0], [80.0, 90.0, 92.0]]
    teacher_runs = [write_run(str(models / f"resnet20_lr_{lr}_{seed}"), teacher_flags("resnet20", "--learning_rate",
                                                                                       lr, dataset=FMNIST), accs,
                              seed=seed) for lr, accs, seed in [("0.05", teachers[0], 0), ("0.1", [80.0, 85.0], 0),
                                                                ("0.05", teachers[1], 1)]]
    for folder in runs_in(students):  # the students of resnet20 -> resnet8 used the lr 0.05 teacher file
        set_teacher_path(folder, os.path.join(teacher_runs[0], "resnet20_best.pth"))
    scratch = [[50.0, 60.0, 65.0], [50.0, 61.0, 66.0]]
    write_runs(models, "resnet8", teacher_flags("resnet8", *QUICK, dataset=FMNIST), scratch, teacher_sha=None)
    write_run(str(models / "resnet8_cifar"), teacher_flags("resnet8"), [40.0])  # another dataset: not on a row
    text, rows = table.build([str(students), str(models)], with_baselines=True)
    cells = student_cells(text, FMNIST)
    assert columns_of(text)[:3] == ["teacher -> student", "teacher", "student (scratch)"]
    assert cells[("resnet20 -> resnet8", "teacher")] == expected_cell(teachers)
    assert cells[("resnet20 -> resnet8", "student (scratch)")] == expected_cell(scratch)
    assert cells[("resnet20 -> resnet14", "teacher")] == expected_cell(teachers)
    assert ("resnet20 -> resnet14", "student (scratch)") not in cells  # no resnet14 trained from scratch
    bold = student_cells(text, FMNIST, bold=True)
    assert bold[("resnet20 -> resnet8", "teacher")] == expected_cell(teachers)  # only the methods compete
    assert "| resnet20 | fashion_mnist | 0.1 |" in text  # the teacher protocol no row shows stays in its table
    assert "| resnet8 | cifar100 |" in text and "| resnet8 | fashion_mnist |" not in text
    baseline = {(r["model"], r["label"]): r for r in rows if r["kind"] == "baseline"}
    assert baseline[("resnet8", "teacher")]["folders"].split(";") == [teacher_runs[0], teacher_runs[2]]


def test_without_teacher_runs_the_teacher_is_the_accuracy_the_students_recorded(tmp_path):
    quickstart_like(tmp_path)
    text, rows = table.build([str(tmp_path)], with_baselines=True)
    cells = student_cells(text, FMNIST)
    assert cells[("resnet20 -> resnet8", "teacher")] == "79.00 ± - (n=1, recorded)"  # write_run's 79.0, one file
    assert ("resnet20 -> resnet8", "student (scratch)") not in cells
    assert "## Teachers and vanilla students" not in text
    assert {r["status"] for r in rows if r["kind"] == "baseline"} == {"recorded"}


# ---- --columns -----------------------------------------------------------------------------------------------------
def test_columns_choose_and_order_the_methods(tmp_path):
    quickstart_like(tmp_path)
    write_runs(tmp_path, "dkd", student("resnet20", "resnet8", "--distill", "dkd"), KD[:1])
    text = table.main([str(tmp_path), "--columns", "crd,kd"])
    assert columns_of(text) == ["teacher -> student", "crd (-a 1 --nce_k 1024)", "kd"]
    by_label = table.main([str(tmp_path), "--columns", "dkd,crd (-a 1 --nce_k 1024)"])
    assert columns_of(by_label) == ["teacher -> student", "dkd", "crd (-a 1 --nce_k 1024)"]
    assert "resnet14" not in by_label  # a row with none of the columns is left out
    with pytest.raises(UserError, match=re.escape("--columns: 'fitnet' matches no column; the columns found: kd, "
                                                  "crd (-a 1 --nce_k 1024), dkd")):
        table.main([str(tmp_path), "--columns", "kd,fitnet"])
    with pytest.raises(UserError, match="--columns 'kd,,crd' has an empty name"):
        table.main([str(tmp_path), "--columns", "kd,,crd"])


# ---- where output goes ---------------------------------------------------------------------------------------------
def files_under(root):
    return sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names)


def test_out_and_csv_write_where_the_user_says_and_nothing_into_the_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    quickstart_like(runs)
    before = files_under(runs)
    printed = table.main([str(runs)])
    assert capsys.readouterr().out == printed and files_under(runs) == before
    table.main([str(runs), "--format", "latex", "--out", str(tmp_path / "paper" / "table.tex")])
    assert capsys.readouterr().out == ""
    assert (tmp_path / "paper" / "table.tex").read_text() == table.build([str(runs)], fmt="latex")[0]
    table.main([str(runs), "--csv", str(tmp_path / "table.csv")])
    assert capsys.readouterr().out == printed  # --csv: the Markdown still printed, the CSV written
    assert read_csv(tmp_path / "table.csv") == list(csv.DictReader(io.StringIO(table.build([str(runs)],
                                                                                           fmt="csv")[0])))
    assert files_under(runs) == before


def test_a_file_among_the_folders_is_skipped(tmp_path):
    quickstart_like(tmp_path)
    table.main([str(tmp_path), "--out", str(tmp_path / "table.csv"), "--format", "csv"])
    paths = runs_in(tmp_path) + [str(tmp_path / "table.csv")]
    assert table.build(paths)[0] == table.build([str(tmp_path)])[0]
    with pytest.raises(UserError, match="files, not folders"):
        table.build([str(tmp_path / "table.csv")])


# ---- helper.plot ---------------------------------------------------------------------------------------------------
def test_plot_takes_the_tables_root_and_draws_each_protocols_mean_and_band(tmp_path):
    quickstart_like(tmp_path)
    table.main([str(tmp_path), "--format", "csv", "--out", str(tmp_path / "table.csv")])  # what a user leaves there
    title, protocols = plot.protocol_curves([str(tmp_path)])
    assert [p.label for p in protocols] == ["resnet20 -> resnet14: kd", "resnet20 -> resnet8: kd",
                                            "resnet20 -> resnet8: crd (-a 1 --nce_k 1024)"]
    assert title.startswith(f"{FMNIST}; all students: --epochs 3 --test_subset 2000")
    kd8 = protocols[1]
    assert len(kd8.runs) == 3
    epochs, means, stds = curves.mean_curve(curves.records_of(kd8), "test_acc")
    assert epochs == [1, 2, 3]
    for epoch, mean, std in zip(epochs, means, stds):
        values = [accs[epoch - 1] for accs in KD]
        assert mean == pytest.approx(statistics.fmean(values)) and std == pytest.approx(sample_std(values))
    fig = curves.draw_protocols(protocols, title)
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "test top-1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [p.label for p in protocols]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["resnet20 -> resnet8: kd"] == pytest.approx(means)
    band = [c for c in ax.collections if c.get_label().startswith("_")][1].get_paths()[0].vertices[:, 1]
    assert max(band) == pytest.approx(max(m + s for m, s in zip(means, stds)))
    assert min(band) == pytest.approx(min(m - s for m, s in zip(means, stds)))
    plt.close(fig)
    out = plot.main(runs_in(tmp_path) + [str(tmp_path / "table.csv"), "--out", str(tmp_path / "figs" / "c.png")])
    assert os.path.getsize(out) > 0


def test_plot_labels_every_protocol_and_keeps_a_failed_run_apart(tmp_path):
    quickstart_like(tmp_path / "student")
    failed = write_run(str(tmp_path / "student" / "kd8_failed"), student("resnet20", "resnet8", "--distill", "kd"),
                       [60.0, 10.0], teacher_sha=SHA_A, seed=7, status="failed", error="loss became non-finite")
    write_runs(tmp_path / "models", "resnet8", teacher_flags("resnet8", dataset=FMNIST), [[50.0, 60.0]],
               teacher_sha=None)
    write_runs(tmp_path / "models", "resnet8_e3", teacher_flags("resnet8", "--epochs", "3", dataset=FMNIST),
               [[50.0, 61.0]], teacher_sha=None)
    _, protocols = plot.protocol_curves([str(tmp_path / "student"), str(tmp_path / "models")])
    labels = [p.label for p in protocols]
    assert labels == ["resnet20 -> resnet14: kd", "resnet20 -> resnet8: kd",
                      f"resnet20 -> resnet8: kd [failed: {os.path.basename(failed)}]",
                      "resnet20 -> resnet8: crd (-a 1 --nce_k 1024)",
                      "vanilla resnet8 (--epochs 240)", "vanilla resnet8 (--epochs 3)"]
    assert len(protocols[1].runs) == 3  # the failed run is not averaged in


def test_plot_of_a_folder_without_runs_is_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run folder"):
        plot.main([str(tmp_path / "empty")])


# ---- --metric: helper.analyze's and helper.probe's numbers ---------------------------------------------------------
def test_metric_tables_read_analysis_and_probe_files_and_bold_the_best_direction(tmp_path):
    quickstart_like(tmp_path)
    values = {"kd8_0": (90.0, 0.30), "kd8_1": (92.0, 0.20), "kd8_2": (95.0, 0.10), "crd8_0": (80.0, 0.05),
              "crd8_1": (84.0, 0.15)}  # kd14 has none: its cell is '-'
    for folder, (agreement, kl) in values.items():
        (tmp_path / folder / "analysis.json").write_text(json.dumps({"agreement": agreement, "kl": kl}))
    for folder, top1 in (("kd8_0", 50.0), ("kd8_1", 54.0)):
        (tmp_path / folder / "probe.json").write_text(json.dumps({"stl10": {"top1": top1}}))

    def cells(metric):
        return student_cells(table.build([str(tmp_path)], metric=metric)[0], FMNIST)

    kd = [values[f"kd8_{i}"] for i in range(3)]
    crd = [values[f"crd8_{i}"] for i in range(2)]
    agreement = cells("agreement")
    mean_kd = statistics.fmean(a for a, _ in kd)
    assert agreement[("resnet20 -> resnet8", "kd")] == f"{mean_kd:.2f} ± {sample_std([a for a, _ in kd]):.2f} (n=3)"
    assert agreement[("resnet20 -> resnet8", "crd (-a 1 --nce_k 1024)")].startswith(
        f"{statistics.fmean(a for a, _ in crd):.2f} ± ")
    assert agreement[("resnet20 -> resnet14", "kd")] == "-"
    kl = cells("kl")
    assert kl[("resnet20 -> resnet8", "crd (-a 1 --nce_k 1024)")].startswith("0.10 ± 0.07 (n=2)")
    assert kl[("resnet20 -> resnet8", "kd")].startswith("0.20 ± 0.10 (n=3)")
    rows = {line.split("|")[1].strip(): line for line in table.build([str(tmp_path)], metric="kl")[0].splitlines()
            if line.startswith("| resnet20 -> ")}
    assert "**0.10 ± 0.07**" in rows["resnet20 -> resnet8"] and "**0.20" not in rows["resnet20 -> resnet8"]  # lower wins
    agreement_rows = [line for line in table.build([str(tmp_path)], metric="agreement")[0].splitlines()
                      if line.startswith("| resnet20 -> resnet8 ")]
    assert f"**{mean_kd:.2f} ± " in agreement_rows[0]  # higher wins
    probe = cells("probe_stl10")
    assert probe[("resnet20 -> resnet8", "kd")] == "52.00 ± 2.83 (n=2)"
    text = table.build([str(tmp_path)], metric="kl")[0]
    assert "--metric kl: mean KL(teacher || student)" in text and "lower is better" in text
    with pytest.raises(UserError, match="unknown --metric 'agreemnt'; choose one of: top1, agreement"):
        table.main([str(tmp_path), "--metric", "agreemnt"])
