import os
import sys

import pytest

# Helpers shared by several test files hold assertions (some the body of a test split across method files, e.g.
# golden_classic1.loss_value_and_input_gradients_match_the_reference_formula): rewritten like a test file's asserts,
# for the same failure messages. Registered before any test file imports them.
pytest.register_assert_rewrite("tests.golden_classic1", "tests.golden_classic2", "tests.golden_dist_mlkd_ickd",
                               "tests.golden_headline", "tests.golden_ls_simkd_dot", "tests.golden_review_ofd")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def teacher(tmp_path_factory):
    """A resnet8 teacher checkpoint for 10 classes (random weights: equivalence, resume and reliability tests do not
    need a trained one)."""
    import torch
    from models import build_model
    path = tmp_path_factory.mktemp("teacher") / "resnet8_teacher.pth"
    torch.manual_seed(7)
    torch.save({"model": build_model("resnet8", 10).state_dict(), "arch": "resnet8", "num_classes": 10}, path)
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, OpenMP threads otherwise spin at barriers (10x slower)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The test files that compare floating-point results (golden values, two code paths, thresholds on what training
# reaches). float32 kernels sum in another order on another CPU (AVX-512, AVX2, none), so CI runs these again with the
# kernels forced to other instruction sets (.ci/run: ATEN_CPU_CAPABILITY=default, and =avx2 with
# ONEDNN_MAX_CPU_ISA=AVX2): a tolerance read off one CPU fails there, not on a user's machine. `pytest -m numerics`.
NUMERICS_FILES = {
    "test_ab.py", "test_at.py", "test_cc.py", "test_ckd.py", "test_crcd.py", "test_crd.py", "test_ddp.py",
    "test_dist.py", "test_dkd.py", "test_fast.py", "test_fitnet.py", "test_fsp.py", "test_ft.py", "test_group.py",
    "test_hkd.py", "test_ickd.py", "test_irg.py", "test_kd.py", "test_kdsvd.py", "test_memory_dtype.py",
    "test_methods_train_step.py", "test_mlkd.py", "test_models_cifar.py", "test_models_imagenet.py",
    "test_models_util.py", "test_nst.py", "test_ofd.py", "test_outside_teachers.py", "test_analyze.py",
    "test_analyze_metrics.py", "test_probe.py", "test_pkt.py", "test_plugin_ctkd.py", "test_plugin_dot.py",
    "test_plugin_logit_stand.py", "test_plugins.py", "test_reviewkd.py", "test_rkd.py", "test_semckd.py",
    "test_simkd.py", "test_sp.py", "test_srrl.py", "test_strong_aug.py", "test_train_student.py",
    "test_train_teacher.py", "test_vid.py",
}


# The long end-to-end tests (torchrun launches, kill -9 loops): left out of `bash scripts/test.sh` so the suite stays
# within a researcher's patience; .ci/run runs them (`pytest -m long`).
LONG_FILES = {"test_ddp.py", "test_kill_resume.py", "test_step_checkpoint_ddp.py", "test_launch_cluster.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: compares floating-point results; CI reruns it under other CPU ISAs")
    config.addinivalue_line("markers", "long: long end-to-end test (DDP, kills, schedulers); scripts/test.sh skips it, "
                                       "CI runs it")


def pytest_collection_modifyitems(items):
    for item in items:
        name = os.path.basename(str(item.fspath))
        if name in NUMERICS_FILES:
            item.add_marker(pytest.mark.numerics)
        if name in LONG_FILES:
            item.add_marker(pytest.mark.long)
