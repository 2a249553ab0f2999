import os
import sys

import pytest

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
