"""Students trained in memory, built exactly as train_student.py builds them (flags, recipe, network, method,
plug-ins, weights, optimizer, step) but with no run folder: for tests, benchmarks and notebooks.

    opt, explicit = student_options(["--distill", "crd", "--model_s", "resnet8"])
    s = trainable_student(opt, shared, explicit)          # shared: helper.student.build.Shared (data facts, teacher)
    s.train_epoch(batches)                                # one epoch of the real loop over a list of loader items
"""
import torch

from helper.engine import distributed
from helper.engine.loop import train_epoch
from helper.options import explicit_dests, finish_student_options, student_parser
from helper.session.student import resolve_student_options
from helper.student.build import build_student, init_trainee, student_trainee
from helper.student.plan import PlannedRun


def student_options(argv):
    """(options, flags given) of a student from its command-line flags, checked as train_student.py checks them;
    the recipe is applied by trainable_student, once the teacher is known."""
    parser = student_parser()
    argv = list(argv)
    return finish_student_options(parser.parse_args(argv)), frozenset(explicit_dests(parser, argv))


class TrainableStudent:
    """A built student (helper.student.build.Student: its fields read through) with an in-memory Trainee."""

    def __init__(self, built, shared, trainee):
        self.built, self.shared, self.trainee = built, shared, trainee

    def __getattr__(self, name):
        built = self.__dict__.get("built")
        if built is None or name.startswith("__"):  # copy and pickle look for hooks before __init__ ran
            raise AttributeError(name)
        return getattr(built, name)

    def init_trainee(self):
        """The Trainee of its init stage (AB, FT, FSP), in memory."""
        return init_trainee(self.built, self.shared)

    def train_epoch(self, batches, epoch=1, trainee=None):
        """One epoch of the real loop over `batches` (a list of loader items); returns the epoch's averages.
        AssertionError when the step failed (a non-finite loss)."""
        trainee = trainee or self.trainee
        train_epoch(epoch, batches, [trainee], torch.device(self.opt.device), teacher=self.shared.teacher)
        if trainee.failed:
            raise AssertionError(trainee.failed)
        return distributed.reduce_meters(trainee.meters, self.opt.device)


def trainable_student(opt, shared, explicit=frozenset(), label="", keep_history=False):
    """The student of `opt` (resolved against the teacher of `shared`: recipe for unset flags, teacher arch) with
    an in-memory Trainee; `keep_history` keeps each step's loss in trainee.history."""
    resolve_student_options(PlannedRun(opt, frozenset(explicit), "in memory", label), shared.teacher_arch)
    built = build_student(opt, shared, label)
    return TrainableStudent(built, shared, student_trainee(built, shared, keep_history=keep_history))
