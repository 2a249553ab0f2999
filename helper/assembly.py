"""The assembly of a student run, shared by train_student.py, the group runner and the tests.

`build_shared` makes what every student of a process shares (data stream, frozen teacher); `build_student` builds one
student from its options (network, method, plug-ins, weights, optimizer, step) without writing anything; `open_student`
then claims its run folder, validates a resume, and returns the Trainee(s) the loop trains.
"""
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from dataset import build_loaders
from distiller_zoo.base import ModelOutput, ProbeShapes, get_distiller_class
from distiller_zoo.KD import DistillKL
from helper import distributed, fast
from helper.errors import UserError
from helper.logger import RunLogger, attach_run_log
from helper.loops import LossStep, cross_entropy, forward_model, validate
from helper.plugins import build_plugins, check_plugins, enabled_plugins
from helper.protocol import run_protocol
from helper.run import InitTrainee, Trainee, count_samples, purge_step, resume_checkpoint, start_writing
from helper.run_folder import RunFolder
from helper.util import extract_state_dict, is_integer, load_checkpoint, load_weights, set_seed
from helper.weights import TermWeights, constant_weights
from models import build_model, input_size, model_dict

log = logging.getLogger("kd")


# ---- the teacher ------------------------------------------------------------------------------------------------
def teacher_name_from_path(path):
    """RepDistiller's fallback for published checkpoints: the architecture is the run folder's prefix."""
    segments = os.path.basename(os.path.dirname(os.path.abspath(path))).split("_")
    if segments[0] == "wrn":
        return "_".join(segments[:3])
    return segments[0]


def teacher_arch(ckpt, path):
    """The architecture a teacher checkpoint records, or its folder's prefix when it records none."""
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if arch is None:
        arch = teacher_name_from_path(path)
        if arch not in model_dict:
            raise UserError(f"--path_t {path}: no 'arch' in the checkpoint and folder prefix {arch!r} is not a "
                            "model name; put it under save/models/<arch>_vanilla/")
    elif not isinstance(arch, str) or arch not in model_dict:
        raise UserError(f"--path_t {path} records arch {arch!r}, which is not a model name of this repository; "
                        "pass a checkpoint written by train_teacher.py or fix its 'arch' entry")
    return arch


def check_teacher_classes(ckpt, path, num_classes):
    """The class count a teacher checkpoint records (when it records one) must be the dataset's, as an integer."""
    ckpt_classes = ckpt.get("num_classes", num_classes) if isinstance(ckpt, dict) else num_classes
    if not is_integer(ckpt_classes):
        raise UserError(f"--path_t {path} records num_classes {ckpt_classes!r}, not an integer; pass a checkpoint "
                        "written by train_teacher.py or fix its 'num_classes' entry")
    if ckpt_classes != num_classes:
        raise UserError(f"--path_t {path} has {ckpt_classes} classes but --dataset has {num_classes}")


def check_finite_weights(state_dict, path):
    """A teacher whose weights hold NaN or inf would only show up as a non-finite loss an epoch later."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"--path_t {path}: {key} holds NaN or inf values (the teacher diverged or the file is "
                            "damaged); pass a checkpoint of a healthy teacher, e.g. its <arch>_best.pth")


def load_teacher(path, num_classes, device):
    """Build the teacher named in the checkpoint (or its folder), load it strictly, freeze it -> (teacher, arch)."""
    ckpt = load_checkpoint(path)
    arch = teacher_arch(ckpt, path)
    check_teacher_classes(ckpt, path, num_classes)
    teacher = build_model(arch, num_classes)
    state_dict = extract_state_dict(ckpt)
    load_weights(teacher, state_dict, path, arch)
    check_finite_weights(state_dict, path)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.to(device), arch


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_input_size(model_name, data):
    if input_size[model_name] != data.input_size:
        raise UserError(f"--model {model_name} expects {input_size[model_name]}px inputs but --dataset gives "
                        f"{data.input_size}px; pick a network for this dataset")


@dataclass
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
    teacher, arch = load_teacher(opt.path_t, data.num_classes, opt.device)
    check_input_size(arch, data)
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


def describe_data(opt, data):
    """The first log lines: device, data sizes, steps per epoch, global batch."""
    device = torch.device(opt.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log.info("device %s (%s); %d process(es)", device, name, opt.world_size)
    if fast.amp_dtype(opt) is torch.float16 and device.type == "cpu":
        log.warning("--amp fp16 on the CPU runs about 18x slower than float32 (the CPU has no fast float16 "
                    "kernels); use --amp bf16 or --amp none")
    log.info("data %s: %d training / %d test images, %dpx, %d classes; loader %s", opt.dataset, data.n_data,
             data.n_val, data.input_size, data.num_classes, data.loader)
    log.info("global batch %d (%d x --batch_size %d); %d steps per epoch", opt.batch_size * opt.world_size,
             opt.world_size, opt.batch_size, len(data.train_loader))


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


def distill_compute(student, distiller, plugins, opt):
    """The per-batch computation of the main stage: compute(batch, teachers, ctx) -> (student logits, terms).

    The student runs as its method needs; the teacher's outputs come from the shared TeacherOutputs; plug-ins set
    the step's temperature and logit transforms; the loop adds "cls" (CE) and "div" (KL_T, when -a is not 0).
    """
    needs = distiller.needs
    criterion_div = DistillKL(opt.kd_T)

    def compute(batch, teachers, ctx):
        out_s = forward_model(student, batch.images, needs)
        if needs.strong_view:
            out_s.strong = ModelOutput(logits=student(batch.images_strong))
        out_t = teachers.get(needs)
        for plugin in plugins:
            plugin.prepare(ctx, out_s, out_t)
        terms = {"cls": cross_entropy(out_s.logits, batch.targets)}
        if opt.alpha != 0:
            z_s, z_t = ctx.distill_logits(out_s.logits.float()), ctx.distill_logits(out_t.logits.float())
            terms["div"] = criterion_div(z_s, z_t, ctx.temp(opt.kd_T)).sum()
        terms.update(distiller.loss(out_s, out_t, batch, ctx))
        return out_s.logits, terms
    return compute


def init_compute(student, distiller):
    """The per-batch computation of the init stage (AB, FT, FSP): (None, {"init": loss})."""
    needs = distiller.needs

    def compute(batch, teachers, ctx):
        out_s = forward_model(student, batch.images, needs)
        return None, {"init": distiller.init_loss(out_s, teachers.get(needs), batch, ctx)}
    return compute


@dataclass
class Student:
    """One student, built: everything but the files."""
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
    trainee: Optional[Trainee] = None
    init_trainee: Optional[InitTrainee] = None
    run_folder: Optional[RunFolder] = None
    resume_ckpt: Optional[dict] = None
    log_handler: Optional[object] = None


def student_run_name(opt, teacher_arch):
    """RepDistiller's student folder name, with the tags of the plug-ins and method variants in use before the
    trial (e.g. `..._b:0.0_ctkd:global_1`), so that variants of one method never share a folder."""
    tags = [cls.tag(opt) for cls in enabled_plugins(opt)] + [get_distiller_class(opt.distill).run_tag(opt)]
    tags = "".join(f"{t}_" for t in tags if t)
    return (f"S:{opt.model_s}_T:{teacher_arch}_{opt.dataset}_{opt.distill}_"
            f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}_{tags}{opt.trial}")


def build_optimizer(param_groups, opt, plugins):
    """The student's SGD (RepDistiller's), or the optimizer of an optimizer plug-in (DOT)."""
    for plugin in plugins:
        optimizer = plugin.build_optimizer(param_groups, opt)
        if optimizer is not None:
            return optimizer
    return torch.optim.SGD(param_groups, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)


def build_student(opt, shared, label=""):
    """Network, method, plug-ins, weights and optimizer of one student, seeded by opt.seed alone (so a student is
    built the same whether it runs alone or in a group); writes nothing."""
    data, teacher = shared.data, shared.teacher
    method = get_distiller_class(opt.distill)
    check_input_size(opt.model_s, data)
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
    name = student_run_name(opt, shared.teacher_arch)
    opt.model_t = shared.teacher_arch
    return Student(opt=opt, label=label, student=student, distiller=distiller, plugins=plugins, weights=weights,
                   optimizer=optimizer, folder=os.path.join(opt.model_path, name),
                   tb_folder=os.path.join(opt.tb_path, name), scaler=fast.grad_scaler(opt))


def check_resumable(s, shared):
    """The checkpoint to resume from must be this student's: same method and same teacher file."""
    opt = s.opt

    def same_run(ckpt):
        if ckpt.get("distill", opt.distill) != opt.distill:
            raise UserError(f"--resume {s.folder}: the checkpoint was trained with --distill {ckpt['distill']}, not "
                            f"{opt.distill}; resume with the same --distill")
        if ckpt.get("teacher_arch", shared.teacher_arch) != shared.teacher_arch:
            raise UserError(f"--resume {s.folder}: the checkpoint was distilled from a {ckpt['teacher_arch']} "
                            f"teacher, not {shared.teacher_arch}; pass the same --path_t")
        if ckpt.get("teacher_sha256", shared.teacher_sha256) != shared.teacher_sha256:
            raise UserError(f"--resume {s.folder}: the checkpoint was distilled from another teacher file "
                            f"(sha256 {ckpt['teacher_sha256'][:12]}...); pass the same --path_t")
        for plugin in s.plugins:
            if plugin.key not in ckpt:
                raise UserError(f"--resume {s.folder}: the checkpoint has no state of {plugin.switch}; it was "
                                f"trained without it")
    return same_run


def claim_folder(s):
    """Lock the run folder (rank 0) and check what an earlier run left there (resume, overwrite); writes nothing
    but the lock."""
    if distributed.is_main_process():
        s.run_folder = RunFolder(s.folder).claim(s.tb_folder, bool(s.opt.resume), s.opt.overwrite)


def read_resume(s, shared, allow_fresh=False):
    """The validated checkpoint to resume from (every rank reads it), restored into the student, its method and
    plug-ins before anything is written; None when the student starts at epoch 1 (allow_fresh: see resume_path)."""
    return resume_checkpoint(s.opt, s.folder, s.opt.model_s, "train_student", s.student, s.optimizer, s.scaler,
                             check_resumable(s, shared), lambda c: restore_method_state(c, s), allow_fresh)


def open_student(s, shared, val_loader, startup=None):
    """Once every student is checked: clean its run folder, write the run's options, start its logs (train.log begins
    with the process's `startup` lines), and build its Trainee (and its init stage's, when it has one)."""
    opt = s.opt
    main_process = distributed.is_main_process()
    ckpt = s.resume_ckpt
    if main_process:
        start_writing(s.run_folder, opt, ckpt)
        s.log_handler = attach_run_log(s.folder, s.label)
        if startup is not None:
            startup.copy_to(s.log_handler)
    logger = RunLogger(s.folder, s.tb_folder, enabled=main_process, purge_step=purge_step(opt, ckpt))
    s.trainee = student_trainee(s, shared, folder=s.folder, logger=logger, val_loader=val_loader,
                                protocol=run_protocol(opt, shared))
    if ckpt is not None:
        s.trainee.resume_from(ckpt)
    elif s.distiller.needs.init_stage and opt.init_epochs > 0:
        s.init_trainee = build_init_trainee(s, shared, logger)
    return s


def student_trainee(s, shared, folder=None, logger=None, val_loader=None, protocol=None):
    """The Trainee of a built student: its step (DDP-wrapped under torchrun), weights, plug-ins and checkpoint
    contents. Without a folder/logger it trains in memory (tests, benchmarks)."""
    opt = s.opt
    modules = [s.student, s.distiller] + [m for p in s.plugins for m in p.modules()]
    compute = fast.wrap_step(distill_compute(s.student, s.distiller, s.plugins, opt), opt)
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
                   eval_modules=[shared.teacher], eval_model=eval_model, folder=folder,
                   logger=logger or RunLogger(None, enabled=False), val_loader=val_loader, needs=s.distiller.needs,
                   plugins=s.plugins, extra_state=extra_state, script="train_student", label=s.label,
                   protocol=protocol, scaler=s.scaler)


def restore_method_state(ckpt, s):
    """Put back the method's modules and buffers (memory banks) and the plug-ins' state."""
    s.distiller.load_state_dict(ckpt["distiller"])
    for plugin in s.plugins:
        plugin.load_state_dict(ckpt[plugin.key])


def build_init_trainee(s, shared, logger):
    """RepDistiller's init stage (AB, FT, FSP): the method's init modules trained for --init_epochs with their own
    SGD (lr: the method's init_lr); under torchrun in DDP."""
    opt = s.opt
    modules = torch.nn.ModuleList(s.distiller.init_modules(s.student))
    optimizer = torch.optim.SGD(modules.parameters(), lr=s.distiller.init_lr(opt), momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    compute = fast.wrap_step(init_compute(s.student, s.distiller), opt)
    if opt.distributed:
        compute = distributed.wrap(LossStep(compute, [modules]), opt, find_unused_parameters=True)
    init_opt = _InitOptions(opt, s.distiller.init_lr(opt))
    return InitTrainee(init_opt, arch=opt.model_s, num_classes=shared.data.num_classes, model=s.student,
                       optimizer=optimizer, compute=compute, weights=constant_weights(init=1.0),
                       train_modules=[modules], eval_modules=[s.student, shared.teacher], folder=s.folder,
                       logger=logger, val_loader=None, needs=s.distiller.needs, script="train_student",
                       label=s.label, distiller=s.distiller, student=s.student)


class _InitOptions:
    """The options of an init stage: the run's, with a constant lr (the method's init_lr) and no decay."""

    def __init__(self, opt, lr):
        self.__dict__.update(vars(opt))
        self.learning_rate, self.lr_decay_epochs, self.lr_schedule = lr, [], "step"
        self.epochs = opt.init_epochs


def teacher_accuracy(shared, opt):
    """The teacher's test accuracy (logged once per process; recorded in the students' checkpoints)."""
    acc, _, _ = validate(shared.data.val_loader, shared.teacher, torch.nn.CrossEntropyLoss(), opt)
    shared.teacher_acc = acc
    log.info("teacher %s accuracy: %.2f (%s)", shared.teacher_arch, acc, opt.path_t)
    return acc

