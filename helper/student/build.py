"""Building students: `build_shared` makes what every student of a process shares (data stream, frozen teacher);
`build_student` builds one student from its resolved options (network, method, plug-ins, weights, optimizer);
`student_trainee` and `init_trainee` give the engine's Trainees that train it. Nothing here writes a file: the
session (helper.session) gives the trainees a record of their run folder, tests and benchmarks train them in memory.
"""
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from dataset import build_loaders
from distiller_zoo.base import ProbeShapes, get_distiller_class
from helper.engine import distributed, fast
from helper.engine.loop import validate
from helper.engine.step import DistillStep, InitStep, LossStep
from helper.engine.trainee import InitTrainee, Trainee, count_samples
from helper.engine.weights import TermWeights, constant_weights
from helper.errors import UserError
from helper.plugins import build_plugins, check_plugins
from helper.runs.files import file_sha256
from helper.student.teacher import check_input_size, dataset_input, load_teacher
from helper.util import set_seed
from models import build_model

log = logging.getLogger("kd")


@dataclass(frozen=True)
class Shared:
    """What the students of one process share: the data stream and the frozen teacher."""
    data: object
    teacher: torch.nn.Module
    teacher_arch: str
    teacher_sha256: str
    teacher_acc: float = 0.0


def build_shared(opt, methods):
    """Data (with what any of `methods` needs) and the teacher of --path_t, validated once."""
    needs = [get_distiller_class(m).needs for m in methods]
    data = build_loaders(opt, with_index=any(n.index or n.contrast_index for n in needs),
                         strong_view=any(n.strong_view for n in needs))
    check_full_batches(opt, data, methods)
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.device, model_t=getattr(opt, "model_t", None),
                                 data_input=dataset_input(opt.dataset, data.input_size),
                                 setting=getattr(opt, "teacher_input", "auto"))
    return Shared(data=data, teacher=teacher, teacher_arch=arch, teacher_sha256=file_sha256(opt.path_t))


def check_full_batches(opt, data, methods):
    """A method that skips partial batches (Needs.full_batches) would train no step without one full batch."""
    n = count_samples(data.train_loader, opt.batch_size)
    if n >= opt.batch_size:
        return
    for method in methods:
        if get_distiller_class(method).needs.full_batches:
            raise UserError(f"--distill {method} trains on full batches only, but the {n} training images per process "
                            f"fill no batch of --batch_size {opt.batch_size}; use more images (--subset) or a "
                            "smaller --batch_size")


# ---- one student ------------------------------------------------------------------------------------------------
@torch.no_grad()
def probe_shapes(student, teacher, needs, size, n_data, num_classes, device, train_targets=None):
    """Features of both networks on a dummy batch of 2, in eval mode (as RepDistiller does)."""
    student.eval()
    teacher.eval()
    x = torch.randn(2, 3, size, size, device=device)
    feat_s, logit_s = student(x, is_feat=True, preact=needs.preact)
    feat_t, logit_t = teacher(x, is_feat=True, preact=needs.teacher_needs.preact)
    return ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=n_data,
                       num_classes=num_classes, train_targets=train_targets)


@dataclass(frozen=True)
class Student:
    """One student, built from its resolved options: everything but the files; never changed afterwards."""
    opt: object
    label: str
    student: torch.nn.Module
    distiller: torch.nn.Module
    plugins: list
    weights: TermWeights
    optimizer: torch.optim.Optimizer
    folder: str
    tb_folder: str
    scaler: Optional[object] = None


def build_optimizer(param_groups, opt, plugins):
    """The student's SGD (RepDistiller's), or the optimizer of an optimizer plug-in (DOT)."""
    for plugin in plugins:
        optimizer = plugin.build_optimizer(param_groups, opt)
        if optimizer is not None:
            return optimizer
    return torch.optim.SGD(param_groups, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)


def build_student(opt, shared, label="", folders=("", "")):
    """Network, method, plug-ins, weights and optimizer of one student, seeded by opt.seed alone (so a student is
    built the same whether it runs alone or in a group); writes nothing. `folders`: (run folder, TensorBoard folder)
    (helper.naming), empty in memory."""
    data, teacher = shared.data, shared.teacher
    method = get_distiller_class(opt.distill)
    check_input_size(opt.model_s, data, "--model_s")
    check_plugins(opt, method)
    set_seed(opt.seed)
    student = build_model(opt.model_s, data.num_classes).to(opt.device)
    probe = probe_shapes(student, teacher, method.needs, data.input_size, data.n_data, data.num_classes, opt.device,
                         data.train_targets)
    distiller = method(opt, probe, student, teacher).to(opt.device)
    plugins = build_plugins(opt, probe)
    plugin_modules = [m.to(opt.device) for p in plugins for m in p.modules()]
    weights = TermWeights(opt, distiller.term_weights(opt), distiller.term_schedules(opt), plugins)
    param_groups = [{"params": list(student.parameters())}] + distiller.param_groups(opt)
    param_groups += [{"params": list(m.parameters())} for m in plugin_modules]  # CTKD: the student's SGD and lr
    optimizer = build_optimizer(param_groups, opt, plugins)
    fast.prepare_models(opt, student, None, extra=[distiller])
    return Student(opt=opt, label=label, student=student, distiller=distiller, plugins=plugins, weights=weights,
                   optimizer=optimizer, folder=folders[0], tb_folder=folders[1], scaler=fast.grad_scaler(opt))


def student_trainee(s, shared, record=None, val_loader=None, keep_history=False):
    """The Trainee of a built student: its step (DDP-wrapped under torchrun), weights, plug-ins and checkpoint
    contents. Without a record it trains in memory (tests, benchmarks)."""
    opt = s.opt
    modules = [s.student, s.distiller] + [m for p in s.plugins for m in p.modules()]
    compute = fast.wrap_step(DistillStep(s.student, s.distiller, s.plugins, opt.kd_T, opt.alpha), opt)
    if opt.distributed:
        # One DDP over student + method modules + plug-in modules. Unused parameters are searched for: a term
        # weighted 0 by a schedule, or a module trained only in the init stage, leaves some unused.
        compute = distributed.wrap(LossStep(compute, modules), opt, find_unused_parameters=True)
    eval_model = s.distiller.eval_model(s.student)

    def extra_state():
        extra = {"distiller": s.distiller.state_dict(), "distill": opt.distill, "teacher_arch": shared.teacher_arch,
                 "teacher_acc": shared.teacher_acc, "teacher_sha256": shared.teacher_sha256,
                 "eval_head": s.distiller.name if eval_model is not None else None}
        scalars = {}
        for plugin in s.plugins:
            extra[plugin.key] = plugin.state_dict()
            scalars.update(plugin.scalars())
        extra["scalars"] = scalars
        return extra

    return Trainee(opt, arch=opt.model_s, num_classes=shared.data.num_classes, model=s.student,
                   optimizer=s.optimizer, compute=compute, weights=s.weights, train_modules=modules,
                   eval_modules=[shared.teacher], eval_model=eval_model, record=record, val_loader=val_loader,
                   needs=s.distiller.needs, plugins=s.plugins, extra_state=extra_state, label=s.label,
                   scaler=s.scaler, keep_history=keep_history)


def restore_method_state(ckpt, s):
    """Put back the method's modules and buffers (memory banks) and the plug-ins' state."""
    s.distiller.load_state_dict(ckpt["distiller"])
    for plugin in s.plugins:
        plugin.load_state_dict(ckpt[plugin.key])


def init_trainee(s, shared, record=None):
    """RepDistiller's init stage (AB, FT, FSP): the method's init modules trained for --init_epochs with their own
    SGD (lr: the method's init_lr); under torchrun in DDP."""
    opt = s.opt
    modules = torch.nn.ModuleList(s.distiller.init_modules(s.student))
    optimizer = torch.optim.SGD(modules.parameters(), lr=s.distiller.init_lr(opt), momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    compute = fast.wrap_step(InitStep(s.student, s.distiller), opt)
    if opt.distributed:
        compute = distributed.wrap(LossStep(compute, [modules]), opt, find_unused_parameters=True)
    init_opt = _InitOptions(opt, s.distiller.init_lr(opt))
    return InitTrainee(init_opt, arch=opt.model_s, num_classes=shared.data.num_classes, model=s.student,
                       optimizer=optimizer, compute=compute, weights=constant_weights(init=1.0),
                       train_modules=[modules], eval_modules=[s.student, shared.teacher], record=record,
                       val_loader=None, needs=s.distiller.needs, label=s.label, distiller=s.distiller,
                       student=s.student)


class _InitOptions:
    """The options of an init stage: the run's, with a constant lr (the method's init_lr) and no decay."""

    def __init__(self, opt, lr):
        self.__dict__.update(vars(opt))
        self.learning_rate, self.lr_decay_epochs, self.lr_schedule = lr, [], "step"
        self.epochs = opt.init_epochs


def with_teacher_accuracy(shared, opt):
    """`shared` with the teacher's test accuracy (logged once per process; recorded in the students' checkpoints)."""
    acc, _, _ = validate(shared.data.val_loader, shared.teacher, torch.nn.CrossEntropyLoss(), opt)
    images = shared.data.n_val
    scope = (f"on a class-balanced {images} of the test images (--test_subset)" if opt.test_subset
             else f"on the {images} test images")
    log.info("teacher %s accuracy: %.2f %s (%s)", shared.teacher_arch, acc, scope, opt.path_t)
    return dataclasses.replace(shared, teacher_acc=acc)
