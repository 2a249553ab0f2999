"""Students built and trained in memory exactly as train_student.py builds them (helper.session.memory), with the
test defaults (cpu, no workers, no progress bar) and a random teacher."""
from types import SimpleNamespace

import torch

from helper.session.memory import student_options, trainable_student
from helper.student.build import Shared
from models import build_model


def parse(*args):
    """A student's options from flags, with the test defaults; `opt.explicit` keeps the flags given."""
    opt, explicit = student_options(["--path_t", "unused.pth", "--device", "cpu", "--num_workers", "0",
                                     "--no_progress", *args])
    opt.explicit = explicit
    return opt


def shared_for(teacher_name, classes, n_data, input_size=32, targets=None):
    """A frozen, randomly initialised teacher and the data facts a student is built from."""
    torch.manual_seed(0)
    teacher = build_model(teacher_name, classes).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    targets = torch.arange(n_data) % classes if targets is None else torch.as_tensor(targets)
    data = SimpleNamespace(num_classes=classes, input_size=input_size, n_data=n_data, train_targets=targets)
    return Shared(data=data, teacher=teacher, teacher_arch=teacher_name, teacher_sha256="test")


def built(opt, shared, record=False):
    """The student of `opt` (recipe applied for unset flags) with an in-memory Trainee (per-step losses kept in
    trainee.history when `record`)."""
    return trainable_student(opt, shared, getattr(opt, "explicit", frozenset()), keep_history=record)


def train(s, shared, batches, epoch=1):
    """One epoch of the real loop over `batches` (a list of loader items); returns the epoch's averages."""
    return s.train_epoch(batches, epoch)
