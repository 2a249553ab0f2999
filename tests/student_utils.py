"""Students built and trained in memory exactly as train_student.py builds them (helper.assembly), for unit tests."""
from types import SimpleNamespace

import torch

import train_student
from helper import distributed
from helper.assembly import Shared, build_student, student_trainee
from helper.loops import train_epoch
from helper.options import explicit_dests
from helper.recipes import apply_recipe
from models import build_model


def parse(*args):
    """A student's options from flags, with the test defaults (cpu, no workers, no progress bar)."""
    argv = ["--path_t", "unused.pth", "--device", "cpu", "--num_workers", "0", "--no_progress", *args]
    opt = train_student.parse_option(argv)
    opt.explicit = explicit_dests(train_student.build_parser(), argv)
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
    """The student of `opt` (recipe applied for unset flags) with an in-memory Trainee."""
    apply_recipe(opt, shared.teacher_arch, getattr(opt, "explicit", set()))
    s = build_student(opt, shared)
    s.trainee = student_trainee(s, shared)
    s.trainee.history = [] if record else None
    return s


def train(s, shared, batches, epoch=1):
    """One epoch of the real loop over `batches` (a list of loader items); returns the epoch's averages."""
    train_epoch(epoch, batches, [s.trainee], torch.device(s.opt.device), teacher=shared.teacher)
    if s.trainee.failed:
        raise AssertionError(s.trainee.failed)
    return distributed.reduce_meters(s.trainee.meters, s.opt.device)
