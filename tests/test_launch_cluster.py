"""python -m helper.launch against real schedulers: a one-node SLURM (scripts/slurm_local.sh; .ci/run starts it)
and the local executor. A table of 3 methods x 2 trials on Fashion-MNIST; a job stopped mid-epoch (SLURM's
warning signal) is requeued and continues from its step checkpoint, a job killed (SIGKILL) is failed until
--resume; in the end every student's weights equal the same line run alone. Where SLURM is not running, its tests
are skipped and say why."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.test_reliability import COMMON, ENV, FMNIST, ROOT
from tests.test_step_checkpoint import assert_same_run
from tests.test_step_checkpoint_ddp import torchrun

SLURM_UP = shutil.which("sinfo") is not None and subprocess.run(
    ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip() in ("idle", "mix", "alloc")
needs_slurm = pytest.mark.skipif(not SLURM_UP, reason="no SLURM running here: `bash scripts/slurm_local.sh start` "
                                                      "(root) brings up a one-node cluster; .ci/run does")
pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
ONE_THREAD = dict(ENV, OMP_NUM_THREADS="1")  # jobs and references alike: the same float32 sums
TABLE = ["--distill", "kd,crd,dkd", "--nce_k", "32", "--model_s", "resnet8", "--epochs", "2"]
LINES = [["--distill", m] for m in ("kd", "crd", "dkd")]
SLOW = "1024"  # 32 steps per epoch: room for the warning signal to land in the middle of one


def data_flags(root, teacher, images="256"):
    flags = [a if a != "128" else images for a in COMMON]  # 256 images: 8 steps per epoch
    return flags + ["--path_t", teacher, "--model_path", str(root / "student"), "--tb_path", str(root / "tb")]


def launcher(*args, wait=True):
    cmd = [sys.executable, "-m", "helper.launch", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    out = subprocess.run(cmd, cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def reference_runs(root, teacher, trials, images="256"):
    """Every line of the table run alone, uninterrupted, by train_student.py: {folder name: folder}."""
    for trial in trials:
        for line in LINES:
            args = data_flags(root, teacher, images) + TABLE + ["--trial", trial, *line]
            out = subprocess.run([sys.executable, "train_student.py", *args], cwd=ROOT, env=ONE_THREAD,
                                 capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
    return {p.name: p for p in (root / "student").iterdir()}


def assert_table_equals_references(launched, references):
    folders = sorted((launched / "student").iterdir())
    assert sorted(p.name for p in folders) == sorted(references)
    for folder in folders:
        assert_same_run(folder, references[folder.name])


def wait_for(condition, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def epoch_steps_done(folder):
    """True once the run in `folder` is in its first epoch's middle (its train.log shows a progress line)."""
    log = folder / "train.log"
    return log.is_file() and "epoch 1 [" in log.read_text()


def squeue():
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout.split("\n")


@needs_slurm
def test_a_table_on_slurm_survives_a_preemption_and_equals_its_single_runs(tmp_path, teacher):
    launched = tmp_path / "slurm"
    args = ["--executor", "slurm", "--folder", str(launched / "launch"), "--trials", "0,1", "--group_size", "1",
            "--cpus_per_task", "1", "--timeout_min", "30", *data_flags(launched, teacher, SLOW), *TABLE,
            "--print_freq", "2"]
    out = launcher(*args)
    assert "6 job(s), 6 run(s); executor slurm" in out
    ids = [job["submissions"][0] for job in read_manifest(launched)]
    assert len({i.split("_")[0] for i in ids}) == 1, f"one job array, not one submission per cell: {ids}"
    wait_for(lambda: any(epoch_steps_done(p) for p in (launched / "student").glob("*crd*_0")), 300,
             "the CRD job of trial 0 to be mid-epoch")
    crd = next((launched / "student").glob("*crd*_0"))
    job_id = next(j["submissions"][-1] for j in read_manifest(launched) if any("crd" in f and f.endswith("_0")
                                                                               for f in j["folders"]))
    subprocess.run(["scancel", "--signal=USR2", job_id])  # may say "can not be altered now" yet signal the step
    wait_for(lambda: (crd / "resnet8_step.pth").exists() or (crd / "results.json").exists(), 120, "the stop")
    assert (crd / "resnet8_step.pth").exists(), "the warning signal came too late to stop mid-epoch"
    wait_for(lambda: any(line.startswith(job_id + " ") for line in squeue()), 60, "the requeue")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
    wait_for(lambda: not any(line.startswith(ids[0].split("_")[0] + "_") for line in squeue()), 600,
             "every job to end")
    status = launcher("--status", str(launched / "launch"))
    assert "6 done (of 6 jobs)" in status and status.count("requeued x1") == 1, status
    assert "no accounting database" in status
    references = reference_runs(tmp_path / "alone", teacher, ["0", "1"], SLOW)
    assert_table_equals_references(launched, references)
    table = subprocess.run([sys.executable, "-m", "helper.table", str(launched / "student")], cwd=ROOT, env=ENV,
                           capture_output=True, text=True).stdout
    assert table.count("(n=2)") == 3, table  # the 3 cells, each over 2 trials


def read_manifest(launched):
    import json
    return json.load(open(launched / "launch" / "launch.json"))["jobs"]


@needs_slurm
def test_an_unknown_partition_is_refused_before_anything_is_submitted(tmp_path, teacher):
    out = subprocess.run([sys.executable, "-m", "helper.launch", "--executor", "slurm", "--folder",
                          str(tmp_path / "launch"), "--slurm_partition", "nosuch", *data_flags(tmp_path, teacher),
                          *TABLE], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --slurm_partition 'nosuch' is not a partition of this cluster; choose one of: debug"], out.stderr
    assert not (tmp_path / "launch").exists()


@needs_slurm
def test_a_ddp_job_of_two_slurm_tasks_equals_the_torchrun_run(tmp_path, teacher):
    launched = tmp_path / "slurm"
    kd = ["--distill", "kd"]
    launcher("--executor", "slurm", "--folder", str(launched / "launch"), "--tasks_per_node", "2",
             "--cpus_per_task", "1", "--timeout_min", "30", *data_flags(launched, teacher),
             "--model_s", "resnet8", "--epochs", "2", *kd)
    wait_for(lambda: not [line for line in squeue() if line.strip()], 600, "the DDP job to end")
    (folder,) = (launched / "student").iterdir()
    assert "2 process(es)" in (folder / "train.log").read_text()
    reference = torchrun(tmp_path / "torchrun", teacher, *kd)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (expected,) = (tmp_path / "torchrun" / "student").iterdir()
    assert_same_run(folder, expected)


def test_the_local_executor_runs_two_jobs_at_a_time_and_resumes_a_killed_one(tmp_path, teacher):
    launched = tmp_path / "local"
    args = ["--executor", "local", "--folder", str(launched / "launch"), "--trials", "0,1", "--group_size", "1",
            "--array_parallelism", "2", *data_flags(launched, teacher), *TABLE, "--print_freq", "2"]
    proc = launcher(*args, wait=False)
    wait_for(lambda: (launched / "student").exists() and any(
        epoch_steps_done(p) for p in (launched / "student").glob("*dkd*_0")), 300, "the DKD job to be mid-epoch")
    job = next(j for j in read_manifest(launched) if j["labels"] == ["dkd>resnet8"] and j["name"] == "trial0-2")
    controller = job["submissions"][-1]  # submitit's local job id: the pid of the process watching the task
    tasks = subprocess.run(["pgrep", "-P", controller], capture_output=True, text=True).stdout.split()
    assert tasks, "the job's task process is not running"
    for pid in tasks:
        os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    running_at_once = max_concurrent(launched)
    assert running_at_once == 2, running_at_once
    status = launcher("--status", str(launched / "launch"))
    assert "trial0-2     dkd>resnet8: failed" in status and "5 done, 1 failed (of 6 jobs)" in status, status
    launcher("--resume", str(launched / "launch"))
    assert "6 done (of 6 jobs)" in launcher("--status", str(launched / "launch"))
    references = reference_runs(tmp_path / "alone", teacher, ["0", "1"])
    assert_table_equals_references(launched, references)


def max_concurrent(launched):
    """The most jobs whose train.log spans overlapped (from their first and last timestamps)."""
    spans = []
    for log in (launched / "student").glob("*/train.log"):
        lines = [line for line in log.read_text().splitlines() if line[:4].isdigit()]
        spans.append((lines[0][:19], lines[-1][:19]))
    return max(sum(1 for s, e in spans if s <= t < e or s == t) for t, _ in spans)
