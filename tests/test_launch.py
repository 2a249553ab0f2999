"""python -m helper.launch (the parts that need no scheduler): the request becomes jobs at exactly the single runs'
folders, bad input is refused with one line before anything is submitted, and a small table runs end to end with
the debug executor (in this process) and reports done."""
import json
import os

import pytest

from helper.errors import UserError
from helper.options import explicit_dests, finish_student_options, student_parser
from helper.session.student import resolve_student_options
from helper.naming import student_run_name
from helper.student.plan import plan_runs
from helper.tools import launch
from tests.test_reliability import COMMON, needs_fmnist

METHODS = ["--distill", "kd,crd,dkd", "--nce_k", "32", "--model_s", "resnet8"]


def request(root, teacher, *extra):
    return COMMON + ["--path_t", teacher, "--epochs", "1", "--model_path", str(root / "student"),
                     "--tb_path", str(root / "tb"), *METHODS, *extra]


def single_run_folder(argv):
    """The folder train_student.py writes for a command line of one student."""
    parser = student_parser()
    (run,) = plan_runs(argv, lambda a: finish_student_options(parser.parse_args(a)), lambda a: explicit_dests(parser, a))
    resolve_student_options(run, "resnet8")
    return os.path.join(run.opt.model_path, student_run_name(run.opt, "resnet8"))


def test_a_table_becomes_one_job_per_trial_and_chunk_at_the_single_runs_folders(tmp_path, teacher):
    jobs = launch.expand(request(tmp_path, teacher), ["0", "1"], 2, tmp_path / "launch")
    assert [j["name"] for j in jobs] == ["trial0-0", "trial0-1", "trial1-0", "trial1-1"]
    assert [j["labels"] for j in jobs] == [["kd>resnet8", "crd>resnet8"], ["dkd>resnet8"]] * 2
    for job in jobs:
        for folder, tokens in zip(job["folders"], job["lines"]):
            trial = job["name"][len("trial")]
            alone = request(tmp_path, teacher, "--trial", trial, *tokens)
            assert folder == single_run_folder(alone)
    assert "--plan" in jobs[0]["argv"] and "--plan" not in jobs[1]["argv"]  # a chunk of one runs its own line
    assert all(os.path.isabs(p) for j in jobs for p in j["folders"])


@pytest.mark.parametrize("flags, words", [
    (["--executor", "pbs"], ["unknown --executor 'pbs'", "slurm, local, debug"]),
    (["--group_size", "0"], ["--group_size must be at least 1"]),
    (["--trials", ","], ["--trials", "names no trial"]),
])
def test_bad_launcher_flags_are_one_line_and_submit_nothing(tmp_path, teacher, flags, words, monkeypatch):
    monkeypatch.setattr(launch, "slurm_partitions", lambda: None)  # flag mistakes are named first, SLURM up or not
    with pytest.raises(UserError) as err:
        launch.main(["--folder", str(tmp_path / "launch"), *flags, *request(tmp_path, teacher)])
    assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "launch").exists()


def test_slurm_missing_is_one_line_after_the_flags_pass(tmp_path, teacher, monkeypatch):
    monkeypatch.setattr(launch, "slurm_partitions", lambda: None)
    with pytest.raises(UserError) as err:
        launch.main(["--folder", str(tmp_path / "launch"), *request(tmp_path, teacher)])
    assert "--executor slurm: no SLURM here" in str(err.value) and "slurm_local.sh start" in str(err.value)
    assert not (tmp_path / "launch").exists()


def test_a_plan_line_that_fails_validation_is_refused_naming_the_line(tmp_path, teacher):
    plan = tmp_path / "plan.txt"
    plan.write_text("--distill kd\n--distill crd --nce_t -1\n")
    with pytest.raises(UserError) as err:
        launch.main(["--folder", str(tmp_path / "launch"), "--executor", "debug",
                     *request(tmp_path, teacher, "--plan", str(plan))])
    assert str(err.value).startswith(f"line 2 of {plan}: --nce_t must be a positive number"), str(err.value)
    assert not (tmp_path / "launch").exists()


def test_status_of_a_folder_that_is_not_a_launch_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not a launch folder"):
        launch.main(["--status", str(tmp_path)])


@needs_fmnist
@pytest.mark.usefixtures("one_thread")
def test_the_debug_executor_runs_the_table_and_status_says_done(tmp_path, teacher, capsys):
    launch.main(["--executor", "debug", "--folder", str(tmp_path / "launch"), "--group_size", "2",
                 *request(tmp_path, teacher, "--distill", "kd,crd")])
    capsys.readouterr()
    states = launch.status(str(tmp_path / "launch"))
    assert [s.kind for s in states] == ["done"]
    out = capsys.readouterr().out
    assert "trial0-0     kd>resnet8, crd>resnet8: done" in out and "1 done (of 1 jobs)" in out
    manifest = json.load(open(tmp_path / "launch" / "launch.json"))
    assert manifest["executor"] == "debug" and len(manifest["commit"]) in (40, len("unknown"))
    from helper.tools import table
    assert len(table.find_run_folders([str(tmp_path / "launch")])) == 2  # the launch folder as the table's input
    with pytest.raises(UserError, match="already holds a launch"):
        launch.main(["--executor", "debug", "--folder", str(tmp_path / "launch"), *request(tmp_path, teacher)])
