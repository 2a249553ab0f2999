"""helper.table, helper.plot and helper.evaluate on damaged input: a damaged or foreign run folder is one listed
problem (skipped, the others kept), damaged log.jsonl records are skipped and reported, never plotted; an output
path that cannot be written and a checkpoint field of the wrong type are one `error:` line. No traceback."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from helper.runs import curves
from helper.tools import evaluate, plot, table
from helper.errors import UserError
from tests.test_table_plot import KD_RUNS, SHA_A, expected_cell, student_cells, student_flags, write_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
AS_ROOT = os.geteuid() == 0  # root writes into read-only folders: those cases cannot fail here


def run_module(module, *args):
    """`python -m <module> ...` as a user runs it -> (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_one_error_line(code, stderr, *words):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]


def kd_run(root, name, accs=KD_RUNS[0], seed=0):
    return write_run(str(root / name), student_flags("resnet32x4", "resnet8x4", "--distill", "kd"), accs,
                     teacher_sha=SHA_A, seed=seed)


def write_bytes(folder, name, data):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def append_log(folder, data):
    with open(os.path.join(folder, "log.jsonl"), "ab") as f:
        f.write(data)


def rewrite_json(folder, name, edit):
    path = os.path.join(folder, name)
    with open(path) as f:
        content = json.load(f)
    with open(path, "w") as f:
        json.dump(edit(content), f)


def set_field(key, value):
    def edit(content):
        content[key] = value
        return content
    return edit


def set_flag(key, value):
    def edit(content):
        content["protocol"]["flags"][key] = value
        return content
    return edit


EPOCH = {"kind": "epoch", "step": 4, "lr": 0.05, "train_loss": 1.0, "test_acc": 70.0}
# (how a run folder is damaged, what its listed reason says)
DAMAGES = {
    "results_not_json": (lambda f: write_bytes(f, "results.json", b'{"status": "fin'),
                         "results.json is not valid JSON"),
    "results_not_utf8": (lambda f: write_bytes(f, "results.json", b'{"status": "\xff"}'),
                         "results.json is not UTF-8 text"),
    "results_a_list": (lambda f: rewrite_json(f, "results.json", lambda c: [c]), "results.json: [{"),
    "results_string_accuracy": (lambda f: rewrite_json(f, "results.json", set_field("best_acc", "74.1")),
                                'results.json: best_acc "74.1" is not a finite number'),
    "results_nan_accuracy": (lambda f: rewrite_json(f, "results.json", set_field("last_acc", float("nan"))),
                             "results.json: last_acc NaN is not a finite number"),
    "protocol_flags_a_string": (lambda f: rewrite_json(f, "results.json", lambda c: {**c, "protocol": {"flags": "x"}}),
                                'results.json protocol: flags "x" is not an object'),
    "protocol_dataset_a_list": (lambda f: rewrite_json(f, "results.json", set_flag("dataset", ["cifar100"])),
                                'results.json protocol.flags: dataset ["cifar100"] is not a string'),
    "protocol_without_method": (lambda f: rewrite_json(f, "results.json", set_flag("distill", None)),
                                "the run records a teacher but not the student's method (distill)"),
    "options_a_list": (lambda f: rewrite_json(f, "options.json", lambda c: list(c)), "options.json: ["),
    "options_string_batch": (lambda f: rewrite_json(f, "options.json", set_field("batch_size", "64")),
                             'options.json: batch_size "64" is not an integer'),
    "log_not_utf8": (lambda f: append_log(f, b'{"kind": "epoch", "step": 4, "test_acc": 7\xff}\n'),
                     "log.jsonl: 1 damaged line skipped (line 4: not UTF-8 text)"),
    "log_string_step": (lambda f: append_log(f, json.dumps({**EPOCH, "step": "4"}).encode() + b"\n"),
                        'log.jsonl: 1 damaged line skipped (line 4: step "4" is not an integer)'),
}


# ---- helper.table --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", DAMAGES)
def test_table_lists_a_damaged_folder_and_keeps_the_others(tmp_path, damage):
    damage_folder, says = DAMAGES[damage]
    good = kd_run(tmp_path, "kd_0")
    bad = kd_run(tmp_path, "kd_1", KD_RUNS[1], seed=1)
    damage_folder(bad)
    text, rows = table.build([str(tmp_path)])
    assert student_cells(text, "cifar100") == {("resnet32x4 -> resnet8x4", "kd"): expected_cell(KD_RUNS[:1])}
    listed = [line for line in text.splitlines() if line.startswith(f"- {bad}: ")]
    assert len(listed) == 1 and listed[0].startswith(f"- {bad}: damaged: {says}"), listed
    by_folder = {r["folders"]: r for r in rows}
    assert by_folder[good]["status"] == "finished"
    assert by_folder[bad]["status"] == "damaged" and by_folder[bad]["reason"].startswith(says)
    assert not by_folder[bad].get("method") and not by_folder[bad].get("kind")  # nothing claimed of a damaged run


def test_a_torn_last_log_line_is_a_write_in_progress_not_damage(tmp_path):
    running = write_run(str(tmp_path / "kd_running"), student_flags("resnet32x4", "resnet8x4", "--distill", "kd"),
                        [1.0, 2.0], teacher_sha=SHA_A, results=False)
    append_log(running, b'{"kind": "epoch", "step": 3, "test_a')
    text, _ = table.build([str(tmp_path)])
    assert f"- {running}: unfinished: no results.json (still running, or stopped): log.jsonl reaches epoch 2" in text


def test_table_with_only_damaged_folders_is_one_error_line(tmp_path):
    bad = kd_run(tmp_path, "kd_0")
    DAMAGES["results_not_json"][0](bad)
    code, stdout, stderr = run_module("helper.table", bad)
    assert_one_error_line(code, stderr, bad, "results.json is not valid JSON")
    assert stdout == "" and not os.path.exists(os.path.join(bad, "table.csv"))
    DAMAGES["results_a_list"][0](kd_run(tmp_path, "kd_1", seed=1))
    with pytest.raises(UserError, match="none of the 2 run folders can be read"):
        table.build([str(tmp_path)])


# ---- helper.plot ---------------------------------------------------------------------------------------------------
def plotted(fig, title="test top-1"):
    """{label: (epochs, values)} of the lines of the panel titled `title`."""
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


@pytest.mark.parametrize("value", ["abc", float("nan"), float("inf"), None, True, [70.0]])
def test_plot_skips_records_whose_values_are_not_finite_numbers(tmp_path, caplog, value):
    folder = kd_run(tmp_path, "kd")
    append_log(folder, json.dumps({**EPOCH, "test_acc": value}).encode() + b"\n")
    append_log(folder, json.dumps({**EPOCH, "step": 5, "test_acc": 75.0}).encode() + b"\n")
    fig = curves.draw_runs([folder])
    assert plotted(fig)["kd"] == ([1, 2, 3, 5], KD_RUNS[0] + [75.0])
    assert f"{folder}: log.jsonl: 1 damaged line skipped (line 4: test_acc {json.dumps(value)} is not a finite " \
           "number)" in caplog.messages


def test_plot_skips_a_non_utf8_record(tmp_path, caplog):
    folder = kd_run(tmp_path, "kd")
    DAMAGES["log_not_utf8"][0](folder)
    fig = curves.draw_runs([folder])
    assert plotted(fig)["kd"] == ([1, 2, 3], KD_RUNS[0])
    assert f"{folder}: {DAMAGES['log_not_utf8'][1]}" in caplog.messages


def test_plot_skips_a_damaged_folder_and_keeps_the_others(tmp_path, caplog):
    good = kd_run(tmp_path, "kd_good")
    foreign = tmp_path / "kd_foreign"
    foreign.mkdir()
    (foreign / "log.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n")
    fig = curves.draw_runs([good, str(foreign)])
    assert list(plotted(fig)) == ["kd_good"]  # labels tell the plotted runs apart
    assert [m for m in caplog.messages if m.startswith("skipped ")] == [
        f"skipped {foreign}: log.jsonl: 2 damaged lines skipped (line 1: not UTF-8 text, ...); no epoch left to plot"]
    code, stdout, stderr = run_module("helper.plot", foreign, "--out", tmp_path / "curves.png")
    assert_one_error_line(code, stderr, str(foreign), "not UTF-8 text", "no epoch left to plot")
    assert stdout == "" and not (tmp_path / "curves.png").exists()


# ---- output paths --------------------------------------------------------------------------------------------------
def unwritable(tmp_path, kind):
    """An output path that cannot be written: a folder, a path under a file, or a file in a read-only folder."""
    if kind == "folder":
        (tmp_path / "out").mkdir()
        return tmp_path / "out"
    if kind == "under_a_file":
        (tmp_path / "file").write_text("")
        return tmp_path / "file" / "out.csv"
    (tmp_path / "locked").mkdir(mode=0o555)
    return tmp_path / "locked" / "out.csv"


KINDS = ["folder", "under_a_file",
         pytest.param("read_only", marks=pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders"))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tool, flag", [(table, "--csv"), (plot, "--out")])
def test_an_output_path_that_cannot_be_written_is_one_line_naming_the_flag(tmp_path, tool, flag, kind):
    folder = kd_run(tmp_path, "kd")
    out = unwritable(tmp_path, kind)
    with pytest.raises(UserError, match="^" + re.escape(f"cannot write {flag} {out}: ")):
        tool.main([folder, flag, str(out)])


def test_an_unwritable_csv_is_one_error_line_from_the_command(tmp_path):
    folder = kd_run(tmp_path, "kd")
    code, _, stderr = run_module("helper.table", folder, "--csv", unwritable(tmp_path, "folder"))
    assert_one_error_line(code, stderr, f"cannot write --csv {tmp_path / 'out'}: Is a directory")


# ---- helper.evaluate -----------------------------------------------------------------------------------------------
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")


@needs_fmnist
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", ["--per_class", "--confusion"])
def test_evaluate_csv_that_cannot_be_written_is_one_line_naming_the_flag(teacher, tmp_path, flag, kind):
    out = unwritable(tmp_path, kind)
    with pytest.raises(UserError, match="^" + re.escape(f"cannot write {flag} {out}: ")):
        evaluate.main([teacher, "--dataset", "fashion_mnist", "--test_subset", "20", "--device", "cpu",
                       "--num_workers", "0", flag, str(out)])


@pytest.mark.parametrize("key, value, says", [
    ("arch", ["resnet8"], "the checkpoint's arch field is ['resnet8'], not a model name"),
    ("arch", 8, "the checkpoint's arch field is 8, not a model name"),
    ("arch", "resnet_unknown", "the checkpoint's arch field is 'resnet_unknown', not a model name"),
    ("dataset", ["fashion_mnist"], "the checkpoint's dataset field is ['fashion_mnist'], not a dataset name"),
    ("eval_head", {"simkd": 1}, "the checkpoint's eval_head field is {'simkd': 1}, not a method name"),
    ("num_classes", "10", "the checkpoint's num_classes field is '10', not a positive integer"),
    ("num_classes", 0, "the checkpoint's num_classes field is 0, not a positive integer"),
    ("opt", ["--epochs", "1"], "the checkpoint's opt field is ['--epochs', '1'], not an object"),
])
def test_a_checkpoint_field_of_the_wrong_type_is_one_line(teacher, tmp_path, key, value, says):
    ckpt = torch.load(teacher, weights_only=True)
    ckpt[key] = value
    path = tmp_path / "resnet8_damaged.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="^" + re.escape(f"{path}: {says}")):
        evaluate.main([str(path), "--device", "cpu"])


def test_a_list_arch_is_one_error_line_from_the_command(teacher, tmp_path):
    ckpt = torch.load(teacher, weights_only=True)
    path = tmp_path / "resnet8_damaged.pth"
    torch.save({**ckpt, "arch": ["resnet8"]}, path)
    code, _, stderr = run_module("helper.evaluate", path, "--device", "cpu")
    assert_one_error_line(code, stderr, str(path), "arch field", "not a model name")


# ---- helper.verify_teacher, file modes --------------------------------------------------------------------------------
def test_verify_teacher_help_and_missing_arguments_are_argparse_not_a_traceback():
    code, stdout, stderr = run_module("helper.verify_teacher", "-h")
    assert code == 0 and "arch" in stdout and "Traceback" not in stderr
    code, _, stderr = run_module("helper.verify_teacher")
    assert code == 2 and "Traceback" not in stderr and "the following arguments are required" in stderr


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    from helper.runs.files import save_atomic, write_text_atomic
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text_atomic(str(tmp_path / "results.json"), "{}")
    save_atomic({"a": 1}, str(tmp_path / "last.pth"))
    expected = plain.stat().st_mode & 0o777
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == expected  # 0644 under umask 022, not 0600
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == expected
