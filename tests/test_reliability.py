"""What the entry points do with mistakes, reruns, parallel runs and diverging runs (issues 11 and 12): one `error:`
line and never a traceback; flags that would be silently accepted are refused; a run folder is never shared or
silently overwritten; a refused --resume writes nothing; divergence stops with exit 1 keeping the last good
checkpoint. Fashion-MNIST subsets on the CPU; subprocesses where the exit code or a second process matters."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_student
import train_teacher
from helper.student.teacher import load_teacher
from helper.errors import UserError
from helper.runs.files import load_checkpoint
from models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses run one torch thread: tiny models, and two processes never oversubscribe a shared CI machine.
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
COMMON = ["--dataset", "fashion_mnist", "--subset", "128", "--test_subset", "64", "--batch_size", "32",
          "--lr_decay_epochs", "100", "--device", "cpu", "--num_workers", "0", "--no_progress"]


# ---- helpers ------------------------------------------------------------------------------------------------------
def student_args(root, teacher, *extra):
    return COMMON + ["--path_t", teacher, "--model_s", "resnet8", "--epochs", "1", "--model_path",
                     str(root / "student"), "--tb_path", str(root / "tb"), *extra]


def teacher_args(root, *extra):
    return COMMON + ["--model", "resnet8", "--epochs", "1", "--model_path", str(root / "models"),
                     "--tb_path", str(root / "tb"), *extra]


def only_folder(root, kind="student"):
    (folder,) = (root / kind).iterdir()
    return folder


def cli(script, *args, timeout=600):
    """Run `script` (train_student.py, tests/kill_worker.py ...) as a subprocess: (exit code, stderr)."""
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env=ENV)
    return result.returncode, result.stderr


def assert_error_line(code, stderr, expected_code, *phrases):
    """The process ended with `expected_code` and its last stderr line is one `error:` line holding `phrases`."""
    last = stderr.strip().splitlines()[-1]
    assert code == expected_code, stderr[-3000:]
    assert "Traceback" not in stderr and last.startswith("error: "), stderr[-3000:]
    for phrase in phrases:
        assert phrase in last, last


def assert_one_line(error, *phrases):
    message = str(error.value)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message


def snapshot(folder):
    """{name: bytes} of every file of a run folder but the lock (it holds the PID of its last holder)."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.name != ".lock"}


def steps(folder):
    return [json.loads(line)["step"] for line in open(folder / "log.jsonl")]


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, teacher):
    """A finished one-epoch KD run: (its root, its folder)."""
    root = tmp_path_factory.mktemp("kd")
    train_student.main(student_args(root, teacher, "--distill", "kd"))
    return root, only_folder(root)


# ---- flags: one line instead of a traceback, a hang or a silent acceptance ----------------------------------------
BAD_STUDENT_FLAGS = [
    (["--learning_rate", "-1"], "--learning_rate"), (["--momentum", "-1"], "--momentum"),
    (["--weight_decay", "-1"], "--weight_decay"), (["--save_freq", "0"], "--save_freq"),
    (["--lr_decay_rate", "-1"], "--lr_decay_rate"), (["--kd_T", "-4"], "--kd_T"), (["--kd_T", "0"], "--kd_T"),
    (["--kd_T", "nan"], "--kd_T"), (["--init_epochs", "-1"], "--init_epochs"), (["--subset", "-5"], "--subset"),
    (["--trial", "a/b"], "--trial"), (["--cuda_graphs"], "--cuda_graphs needs a CUDA device"),
    (["--model_s", "resnet9"], "unknown --model_s 'resnet9'"), (["--distill", "kdd"], "unknown --distill 'kdd'"),
]


@pytest.mark.parametrize("flags,says", BAD_STUDENT_FLAGS, ids=[" ".join(f) for f, _ in BAD_STUDENT_FLAGS])
def test_a_bad_student_flag_is_one_line_naming_it(tmp_path, flags, says):
    with pytest.raises(UserError) as err:
        train_student.parse_option(student_args(tmp_path, "t.pth", *flags))
    assert_one_line(err, says)


BAD_TEACHER_FLAGS = [(["--learning_rate", "-0.1"], "--learning_rate"), (["--save_freq", "0"], "--save_freq"),
                     (["--subset", "-5"], "--subset"), (["--trial", "a/b"], "--trial"),
                     (["--cuda_graphs"], "--cuda_graphs needs a CUDA device")]


@pytest.mark.parametrize("flags,says", BAD_TEACHER_FLAGS, ids=[" ".join(f) for f, _ in BAD_TEACHER_FLAGS])
def test_a_bad_teacher_flag_is_one_line_naming_it(tmp_path, flags, says):
    with pytest.raises(UserError) as err:
        train_teacher.parse_option(teacher_args(tmp_path, *flags))
    assert_one_line(err, says)


def test_a_bad_flag_ends_the_script_with_one_error_line_and_exit_2(tmp_path):
    code, stderr = cli("train_student.py", *student_args(tmp_path, "t.pth", "--momentum", "-1"))
    assert_error_line(code, stderr, 2, "--momentum must be a finite number >= 0, got -1.0")
    assert not (tmp_path / "student").exists()


@needs_fmnist
def test_a_temperature_plugin_that_no_term_reads_is_refused(tmp_path, teacher):
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, "--distill", "attention", "-a", "0", "--have_mlp", "1"))
    assert_one_line(err, "--have_mlp 1", "no loss term that reads a temperature")
    assert not (tmp_path / "student").exists()


@needs_fmnist
def test_more_negatives_than_the_data_holds_is_a_start_up_warning(tmp_path, teacher, caplog):
    caplog.set_level("WARNING", logger="kd")
    assert train_student.main(student_args(tmp_path, teacher, "--distill", "crd", "--nce_k", "100000",
                                           "--dry_run")) is None
    assert any("--nce_k 100000 is larger than" in r.getMessage() for r in caplog.records), caplog.text


@needs_fmnist
@pytest.mark.parametrize("flag", ["--model_path", "--tb_path"])
def test_an_output_path_under_a_file_or_unwritable_is_one_line(tmp_path, teacher, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for path in (blocker / "runs", "/proc/kd_test/runs"):
        with pytest.raises(UserError) as err:
            train_student.main(student_args(tmp_path, teacher, flag, str(path)))
        assert_one_line(err, f"pick a writable {flag}", str(path))
        with pytest.raises(UserError) as err:
            train_teacher.main(teacher_args(tmp_path, flag, str(path)))
        assert_one_line(err, f"pick a writable {flag}", str(path))


# ---- checkpoints: one line that says what is wrong, never "retry with weights_only=False" -------------------------
class RunsShell:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_teacher_file(tmp_path, kind):
    folder = tmp_path / "resnet8_vanilla"
    folder.mkdir(exist_ok=True)
    path = folder / "teacher.pth"
    if kind == "garbage":
        path.write_bytes(os.urandom(2000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "crafted":
        torch.save({"model": RunsShell(tmp_path / "pwned")}, path)
    elif kind == "wrong_classes":
        torch.save({"model": build_model("resnet8", 100).state_dict(), "arch": "resnet8", "num_classes": 100}, path)
    elif kind == "torchvision":
        import torchvision
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)  # a raw state_dict
    return path


TEACHER_FILES = [("missing", "does not exist"), ("directory", "is a directory"), ("empty", "is empty"),
                 ("garbage", "is not a checkpoint this tool can load safely"),
                 ("crafted", "is not a checkpoint this tool can load safely"),
                 ("wrong_classes", "has 100 classes but --dataset has 10"),
                 ("torchvision", "does not match architecture resnet8")]


@pytest.mark.parametrize("kind,says", TEACHER_FILES, ids=[k for k, _ in TEACHER_FILES])
def test_an_unusable_teacher_file_is_one_line_that_says_why(tmp_path, kind, says):
    path = write_teacher_file(tmp_path, kind)
    with pytest.raises(UserError) as err:
        load_teacher(str(path), 10, torch.device("cpu"))
    assert_one_line(err, str(path), says)
    assert "weights_only" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


@needs_fmnist
def test_a_crafted_teacher_pickle_ends_the_script_with_one_line_and_runs_nothing(tmp_path):
    path = write_teacher_file(tmp_path, "crafted")
    code, stderr = cli("train_student.py", *student_args(tmp_path, str(path)))
    assert_error_line(code, stderr, 2, "is not a checkpoint this tool can load safely", "posix.system")
    assert "weights_only" not in stderr
    assert not (tmp_path / "pwned").exists()


# ---- resume: the checkpoint must be this run's; a refused resume writes nothing -----------------------------------
@needs_fmnist
@pytest.mark.parametrize("method", [["--distill", "crd", "--nce_k", "32"], ["--distill", "attention"]],
                         ids=["crd", "attention"])
def test_resuming_a_kd_checkpoint_with_another_method_is_refused(tmp_path, teacher, kd_run, method):
    last = kd_run[1] / "resnet8_last.pth"
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, *method, "--epochs", "2", "--resume", str(last)))
    assert_one_line(err, f"trained with --distill kd, not {method[1]}")


@needs_fmnist
def test_resuming_a_crd_checkpoint_as_kd_is_refused(tmp_path, teacher):
    crd = ["--distill", "crd", "--nce_k", "32"]
    train_student.main(student_args(tmp_path / "crd", teacher, *crd))
    last = only_folder(tmp_path / "crd") / "resnet8_last.pth"
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, "--distill", "kd", "--epochs", "2", "--resume", str(last)))
    assert_one_line(err, "trained with --distill crd, not kd")


@needs_fmnist
def test_resuming_with_another_teacher_file_is_refused(tmp_path, teacher, kd_run):
    other = tmp_path / "other_teacher.pth"
    torch.manual_seed(8)
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10}, other)
    with pytest.raises(UserError) as err:
        train_student.main(student_args(kd_run[0], str(other), "--distill", "kd", "--epochs", "2", "--resume"))
    assert_one_line(err, "another teacher file", "--path_t")


@needs_fmnist
def test_a_teacher_checkpoint_and_a_student_checkpoint_do_not_resume_each_other(tmp_path, teacher, kd_run):
    train_teacher.main(teacher_args(tmp_path))
    teacher_last = only_folder(tmp_path, "models") / "resnet8_last.pth"
    with pytest.raises(UserError) as err:
        train_student.main(student_args(tmp_path, teacher, "--epochs", "2", "--resume", str(teacher_last)))
    assert_one_line(err, "written by train_teacher.py, not train_student.py")
    student_last = kd_run[1] / "resnet8_last.pth"
    with pytest.raises(UserError) as err:
        train_teacher.main(teacher_args(tmp_path / "t2", "--epochs", "2", "--resume", str(student_last)))
    assert_one_line(err, "written by train_student.py, not train_teacher.py")


@needs_fmnist
def test_a_refused_resume_rewrites_nothing(teacher, kd_run):
    root, folder = kd_run
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_student.main(student_args(root, teacher, "--epochs", "2", "--resume", "--batch_size", "16"))
    assert_one_line(err, "global batch of 32", "--allow_batch_change")
    assert snapshot(folder) == before


# ---- run folders: one writer at a time, never a silent second run -------------------------------------------------
@needs_fmnist
def test_a_finished_run_folder_is_refused_without_resume_or_overwrite(tmp_path, teacher):
    args = student_args(tmp_path, teacher)
    train_student.main(args)
    folder = only_folder(tmp_path)
    before = snapshot(folder)
    with pytest.raises(UserError) as err:
        train_student.main(args)
    assert_one_line(err, "already holds a finished run", "--resume", "--overwrite", "name another folder (--tag, --trial)")
    assert snapshot(folder) == before
    for extra in (["--seed", "9"], ["--learning_rate", "0.01"]):  # another experiment: its own folder, named so
        train_student.main(args + extra)
    assert len(list((tmp_path / "student").iterdir())) == 3 and snapshot(folder) == before
    (folder / ".tmp-left-by-a-kill.pth").write_bytes(b"half a checkpoint")
    train_student.main(args + ["--overwrite"])
    assert steps(folder) == [1]
    assert not [f.name for f in folder.iterdir() if f.name.startswith(".tmp-")]


def wait_until_stopped(process, timeout=600):
    """Wait until `process` has stopped itself (SIGSTOP); fail with its stderr if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the first run ended (code {process.returncode}) before its stop point: "
                                 f"{process.stderr.read()[-3000:]}")
        with open(f"/proc/{process.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.2)
    raise AssertionError("the first run never reached its stop point")


@needs_fmnist
def test_a_second_run_on_a_folder_in_use_stops_with_one_line_naming_the_holder(tmp_path, teacher):
    args = student_args(tmp_path, teacher, "--epochs", "2")
    env = dict(ENV, KD_TEST_KILL="step@2", KD_TEST_SIGNAL="STOP")
    first = subprocess.Popen([sys.executable, "tests/kill_worker.py", "student", *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(first)  # mid-epoch 1, holding the run folder
        code, stderr = cli("train_student.py", *args)
        assert_error_line(code, stderr, 2, "is in use by another run", f"PID {first.pid}", "--trial")
        os.kill(first.pid, signal.SIGCONT)
        _, first_stderr = first.communicate(timeout=600)
        assert first.returncode == 0, first_stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert steps(only_folder(tmp_path)) == [1, 2]


# ---- divergence and NaN: exit 1, one line, the last good checkpoint kept (or none written, said so) ---------------
@needs_fmnist
def test_a_run_that_diverges_without_a_nan_training_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, teacher):
    # One step per epoch; from epoch 2 the lr is 5e7: the weights explode and the test loss is NaN, while the
    # training loss of that epoch (computed before its only step) is finite.
    args = student_args(tmp_path, teacher, "--subset", "32", "--epochs", "3", "--lr_decay_epochs", "1",
                        "--lr_decay_rate", "1e9")
    code, stderr = cli("train_student.py", *args)
    assert_error_line(code, stderr, 1, "diverged in epoch 2", "non-finite test loss",
                      "the last good checkpoint (resnet8_last.pth, epoch 1) is kept")
    folder = only_folder(tmp_path)
    last = load_checkpoint(str(folder / "resnet8_last.pth"))
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert steps(folder) == [1]
    results = json.load(open(folder / "results.json"))
    assert results["status"] == "failed" and "diverged in epoch 2" in results["error"]


@needs_fmnist
def test_a_nan_loss_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path, teacher):
    code, stderr = cli("train_student.py", *student_args(tmp_path, teacher, "--learning_rate", "1e6"))
    assert_error_line(code, stderr, 1, "loss became non-finite in epoch 1", "no checkpoint was written yet")
    assert "is kept" not in stderr
    assert not list(only_folder(tmp_path).glob("*.pth"))
