"""A stop signal under torchrun (Gloo, 2 processes on the CPU): one rank gets SIGUSR2, every rank stops after the
same step (they vote each step), rank 0 writes one step checkpoint holding every rank's epoch state, and a torchrun
--resume ends bit-identical to the DDP run that was not stopped."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from tests.test_reliability import COMMON, ROOT, needs_fmnist, only_folder
from tests.test_step_checkpoint import assert_same_run

pytestmark = [needs_fmnist, pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                               reason="needs torch.distributed with Gloo")]
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")


def torchrun(root, teacher, *extra, signal_after=None):
    args = [a if a != "128" else "256" for a in COMMON] + [  # 256 images: 4 steps per epoch on each of 2 ranks
        "--path_t", teacher, "--model_s", "resnet8", "--epochs", "2", "--model_path", str(root / "student"),
        "--tb_path", str(root / "tb"), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    if signal_after is not None:
        env["KD_TEST_SIGNAL_AFTER"] = str(signal_after)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", WORKER, "student",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", [["--distill", "kd"], ["--distill", "crd", "--nce_k", "32"]], ids=["kd", "crd"])
def test_a_ddp_run_stopped_mid_epoch_resumes_to_the_uninterrupted_ddp_run(tmp_path, teacher, method):
    reference = torchrun(tmp_path / "ref", teacher, *method)
    assert reference.returncode == 0, reference.stderr[-3000:]
    stopped = torchrun(tmp_path / "stop", teacher, *method, signal_after=2)
    assert stopped.returncode != 0 and "stopped by SIGUSR2 in epoch 1 after step 2" in stopped.stderr, \
        stopped.stderr[-3000:]
    assert list(only_folder(tmp_path / "stop").glob("resnet8_step.pth"))
    resumed = torchrun(tmp_path / "stop", teacher, *method, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(only_folder(tmp_path / "stop"), only_folder(tmp_path / "ref"))
