"""Distil a student from a frozen teacher (RepDistiller's train_student.py: same flags, folders and losses).

loss = gamma * CE(student, labels) + alpha * KL_T(student || teacher) + beta * (the method's terms)

Multi-GPU: `torchrun --nproc_per_node=N train_student.py ...` (DDP; --batch_size is per process, see README).
"""
import argparse
import logging
import os

import torch

import distiller_zoo  # noqa: F401  registers every method
from crd.memory import MEMORY_DTYPES
from dataset import build_loaders
from distiller_zoo.base import ProbeShapes, get_distiller_class
from distiller_zoo.base import distiller_registry
from distiller_zoo.CTKD import add_ctkd_args, build_temperature, curriculum_lambda
from distiller_zoo.CTKD import stats as ctkd_stats
from distiller_zoo.KD import DistillKL
from helper import distributed
from helper import fast
from helper.errors import UserError
from helper.logger import RunLogger
from helper.loops import LossStep, cross_entropy, forward_model, train_epoch, validate
from helper.options import add_training_args, apply_default_lr, finish_training_args, run_cli
from helper.run import RunState, fit, is_main_process, resume, save_options, seed_epoch, unwrap
from helper.schedules import MIMIC_SCHEDULES, mimic_weight, task_weight
from helper.util import AverageMeter, extract_state_dict, load_checkpoint, load_weights, save_atomic, set_seed
from models import build_model, model_dict
from train_teacher import check_input_size

log = logging.getLogger("kd")

# -r/-a/-b used when a flag is not given: the weights of scripts/run_cifar_distill.sh (RepDistiller / SemCKD).
RECIPE_WEIGHTS = {
    "kd": (0.1, 0.9, 0.0), "hint": (1.0, 0.0, 100.0), "attention": (1.0, 0.0, 1000.0),
    "similarity": (1.0, 0.0, 3000.0), "correlation": (1.0, 0.0, 0.02), "vid": (1.0, 0.0, 1.0),
    "rkd": (1.0, 0.0, 1.0), "pkt": (1.0, 0.0, 30000.0), "abound": (1.0, 0.0, 1.0), "factor": (1.0, 0.0, 200.0),
    "fsp": (1.0, 0.0, 50.0), "nst": (1.0, 0.0, 50.0), "kdsvd": (1.0, 0.0, 1.0), "crd": (1.0, 0.0, 0.8),
    "irg": (1.0, 1.0, 0.005), "hkd": (1.0, 1.0, 1.0), "semckd": (1.0, 1.0, 400.0), "ckd": (1.0, 0.0, 100.0),
    "dkd": (1.0, 0.0, 1.0), "crcd": (1.0, 0.9, 1.0),
}


def parse_option(argv=None):
    parser = argparse.ArgumentParser(description="Distil a student network from a trained teacher.")
    add_training_args(parser)
    p = parser.add_argument_group("distillation")
    p.add_argument("--path_t", "--path-t", dest="path_t", type=str, default=None, help="teacher checkpoint ({'model': state_dict} file)")
    p.add_argument("--model_s", type=str, default="resnet8", help="student network name (resnet8)")
    p.add_argument("--distill", type=str, default="kd", help="method: " + ", ".join(sorted(distiller_registry)))
    p.add_argument("-r", "--gamma", type=float, default=None, help="weight of the classification loss")
    p.add_argument("-a", "--alpha", type=float, default=None, help="weight of the KL divergence to the teacher")
    p.add_argument("-b", "--beta", type=float, default=None, help="weight of the method's own loss terms")
    p.add_argument("--kd_T", type=float, default=4, help="temperature of the KL term (4)")
    p.add_argument("--feat_dim", type=int, default=128, help="embedding dimension of CRD/CC (128)")
    p.add_argument("--mode", type=str, default="exact", choices=["exact", "relax"], help="CRD positive mode")
    p.add_argument("--nce_k", type=int, default=16384, help="CRD negatives per sample (16384)")
    p.add_argument("--nce_t", type=float, default=0.07, help="CRD temperature (0.07)")
    p.add_argument("--nce_m", type=float, default=0.5, help="CRD memory momentum (0.5)")
    p.add_argument("--memory_dtype", type=str, default="float32", choices=list(MEMORY_DTYPES),
                   help="storage of CRD/CRCD memory banks; bfloat16 halves them, scores stay float32 (float32)")
    p.add_argument("--percent", type=float, default=1.0, help="fraction of each class's negatives CRD draws from")
    p.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4], help="FitNet feature index (2)")
    p.add_argument("--init_epochs", type=int, default=30, help="init-stage epochs of abound/factor/fsp (30)")
    p.add_argument("--model_path", type=str, default="./save/student_model", help="where run folders go")
    p.add_argument("--tb_path", type=str, default="./save/student_tensorboards", help="TensorBoard logs")
    p.add_argument("--dry_run", action="store_true", help="build data, models and method, run no step, exit")
    p.add_argument("--mimic_schedule", type=str, default="constant", choices=MIMIC_SCHEDULES,
                   help="CRCD's adjust_mimic_loss_weight on every distillation term (constant)")
    add_ctkd_args(parser)
    fast.add_fast_args(parser)
    for name in sorted(distiller_registry):
        distiller_registry[name].add_args(parser.add_argument_group(f"--distill {name}"))
    opt = parser.parse_args(argv)
    return finish_options(opt)


def finish_options(opt):
    if opt.path_t is None:
        raise UserError("--path_t is required: the teacher checkpoint to distil from")
    get_distiller_class(opt.distill)
    if opt.model_s not in model_dict:
        raise UserError(f"unknown --model_s {opt.model_s!r}; choose one of: {', '.join(sorted(model_dict))}")
    recipe = RECIPE_WEIGHTS.get(opt.distill, (1.0, 0.0, 1.0))
    for flag, name, value in zip(("-r", "-a", "-b"), ("gamma", "alpha", "beta"), recipe):
        if getattr(opt, name) is None:
            setattr(opt, name, value)
            log.info("%s not given: using %g for --distill %s (scripts/run_cifar_distill.sh)", flag, value, opt.distill)
    apply_default_lr(opt, opt.model_s, log)
    finish_training_args(opt)
    fast.check_fast_args(opt, log)
    return opt


def teacher_name_from_path(path):
    """RepDistiller's fallback for published checkpoints: the architecture is the run folder's prefix."""
    segments = os.path.basename(os.path.dirname(os.path.abspath(path))).split("_")
    if segments[0] == "wrn":
        return "_".join(segments[:3])
    return segments[0]


def load_teacher(path, num_classes, device):
    """Build the teacher named in the checkpoint (or its folder), load it strictly, freeze it."""
    ckpt = load_checkpoint(path)
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if arch is None:
        arch = teacher_name_from_path(path)
        if arch not in model_dict:
            raise UserError(f"--path_t {path}: no 'arch' in the checkpoint and folder prefix {arch!r} is not a "
                            "model name; put it under save/models/<arch>_vanilla/")
    ckpt_classes = ckpt.get("num_classes", num_classes) if isinstance(ckpt, dict) else num_classes
    if ckpt_classes != num_classes:
        raise UserError(f"--path_t {path} has {ckpt_classes} classes but --dataset has {num_classes}")
    teacher = build_model(arch, num_classes)
    load_weights(teacher, extract_state_dict(ckpt), path, arch)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.to(device), arch


@torch.no_grad()
def probe_shapes(student, teacher, needs, size, n_data, num_classes, device):
    """Features of both networks on a dummy batch of 2, in eval mode (as RepDistiller does)."""
    student.eval()
    teacher.eval()
    x = torch.randn(2, 3, size, size, device=device)
    feat_s, logit_s = student(x, is_feat=True, preact=needs.preact)
    feat_t, logit_t = teacher(x, is_feat=True, preact=needs.preact)
    return ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=n_data,
                       num_classes=num_classes)


class TermWeights:
    """Weights of the loss terms: cls -> gamma, div -> alpha, any method term -> beta unless overridden.

    Calling it with (epoch, iteration in epoch, iterations per epoch) gives the weights of that step:
    the --mimic_schedule multiplier on every distillation term (its task weight on cls) and the
    method's own per-term schedules (e.g. DKD's warm-up).
    """

    def __init__(self, opt, overrides, schedules=None):
        self.fixed = {"cls": opt.gamma, "div": opt.alpha}
        self.fixed.update(overrides)
        self.beta = opt.beta
        self.mimic = getattr(opt, "mimic_schedule", "constant")
        self.epochs = getattr(opt, "epochs", 1)
        self.schedules = schedules or {}

    def __getitem__(self, name):
        return self.fixed.get(name, self.beta)

    def __call__(self, epoch, iteration, iters_per_epoch):
        step = (epoch - 1) * iters_per_epoch + iteration
        total = self.epochs * iters_per_epoch
        mimic = mimic_weight(self.mimic, step, total)
        task = task_weight(self.mimic, step, total)
        return _StepWeights(self, {"cls": task}, mimic,
                            {k: f(epoch, iteration, iters_per_epoch) for k, f in self.schedules.items()})


class _StepWeights:
    """The weights of one step: base weight x schedule multipliers."""

    def __init__(self, base, special, mimic, per_term):
        self.base, self.special, self.mimic, self.per_term = base, special, mimic, per_term

    def __getitem__(self, name):
        return self.base[name] * self.special.get(name, self.mimic) * self.per_term.get(name, 1.0)


class TemperaturePlugin:
    """CTKD's learnable temperature for every logit loss: set on each batch, averaged per epoch for the logs."""

    def __init__(self, module, opt):
        self.module, self.opt = module, opt
        self.lam = 0.0
        self.meters = {}

    def start_epoch(self, epoch):
        self.lam = curriculum_lambda(epoch, self.opt)
        self.meters = {"temp_mean": AverageMeter(), "temp_std": AverageMeter()}

    def __call__(self, logit_t, logit_s):
        temp = self.module(logit_t, logit_s, self.lam)
        for name, value in ctkd_stats(temp).items():
            self.meters[name].update(value)
        return temp

    def scalars(self):
        """Epoch means over all ranks' batches (a collective under torchrun: call on every rank)."""
        out = distributed.reduce_meters({name: m for name, m in self.meters.items() if m.count}, self.opt.device)
        if out:
            out["ctkd_lambda"] = self.lam
        return out


def distill_step(student, teacher, distiller, criterion_div, weights, temperature=None):
    """The per-batch computation of the main stage: (student logits, named loss terms)."""
    needs = distiller.needs

    def compute(batch):
        out_s = forward_model(student, batch.images, needs)
        with torch.no_grad():
            out_t = forward_model(teacher, batch.images, needs)
        if temperature is not None:
            batch.temperature = temperature(out_t.logits, out_s.logits)
        terms = {"cls": cross_entropy(out_s.logits, batch.targets)}
        if weights["div"] != 0:
            terms["div"] = criterion_div(out_s.logits.float(), out_t.logits.float(), batch.temperature).sum()
        terms.update(distiller.loss(out_s, out_t, batch))
        return out_s.logits, terms
    return compute


def restore_method_state(ckpt, distiller, temp_module):
    """Put back the method's modules and buffers (memory banks) and the CTKD temperature."""
    distiller.load_state_dict(ckpt["distiller"])
    if temp_module is not None:
        if "temperature" not in ckpt:
            raise UserError("--resume checkpoint has no CTKD temperature; it was trained without --have_mlp 1")
        temp_module.load_state_dict(ckpt["temperature"])


def run_init_stage(opt, distiller, student, teacher, loader, folder, logger, sampler=None):
    """RepDistiller's init stage (AB, FT, FSP): train the method's init modules for --init_epochs.

    Under torchrun the init modules train in DDP; rank 0 writes <model_s>_init.pth.
    """
    modules = torch.nn.ModuleList(distiller.init_modules(student))
    optimizer = torch.optim.SGD(modules.parameters(), lr=distiller.init_lr(opt), momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    needs = distiller.needs

    def compute(batch):
        out_s = forward_model(student, batch.images, needs)
        with torch.no_grad():
            out_t = forward_model(teacher, batch.images, needs)
        return None, {"init": distiller.init_loss(out_s, out_t, batch)}

    init_step = fast.wrap_step(compute, opt)
    if opt.distributed:
        init_step = distributed.wrap(LossStep(init_step, [modules]), opt, find_unused_parameters=True)
    for epoch in range(1, opt.init_epochs + 1):
        seed_epoch(opt.seed - epoch, epoch, loader, sampler)
        stats = train_epoch(epoch, loader, init_step, optimizer, lambda *step: {"init": 1.0}, opt,
                            train_modules=[modules], eval_modules=[student, teacher], desc="init")
        distributed.broadcast_buffers(student, distiller)
        logger.log(epoch, {"init_loss": stats["loss"]}, kind="init")
        log.info("init epoch %d  loss %.4f", epoch, stats["loss"])
    distiller.on_init_end()
    if is_main_process():
        save_atomic({"model": unwrap(student).state_dict(), "distiller": distiller.state_dict(),
                     "arch": opt.model_s}, os.path.join(folder, f"{opt.model_s}_init.pth"))


def main(argv=None):
    opt = parse_option(argv)
    distributed.setup(opt)
    set_seed(opt.seed)
    method = get_distiller_class(opt.distill)
    needs = method.needs
    data = build_loaders(opt, with_index=needs.index or needs.contrast_index, with_contrast=needs.contrast_index,
                         drop_last=needs.full_batches)
    check_input_size(opt.model_s, data)
    teacher, opt.model_t = load_teacher(opt.path_t, data.num_classes, opt.device)
    student = build_model(opt.model_s, data.num_classes).to(opt.device)
    probe = probe_shapes(student, teacher, needs, data.input_size, data.n_data, data.num_classes, opt.device)
    distiller = method(opt, probe, student, teacher).to(opt.device)
    criterion_div = DistillKL(opt.kd_T)
    weights = TermWeights(opt, distiller.term_weights(opt), distiller.term_schedules(opt))
    temp_module = build_temperature(opt, data.num_classes)
    temperature = None
    if temp_module is not None:
        temp_module.to(opt.device)
        temperature = TemperaturePlugin(temp_module, opt)

    opt.model_name = (f"S:{opt.model_s}_T:{opt.model_t}_{opt.dataset}_{opt.distill}_"
                      f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}_{opt.trial}")
    folder = os.path.join(opt.model_path, opt.model_name)
    param_groups = [{"params": list(student.parameters())}] + distiller.param_groups(opt)
    if temp_module is not None:  # CTKD: the temperature shares the student's SGD and lr schedule
        param_groups.append({"params": list(temp_module.parameters())})
    optimizer = torch.optim.SGD(param_groups, lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    student, teacher = fast.prepare_models(opt, student, teacher, extra=[distiller])
    log.info(fast.describe(opt))
    if opt.dry_run:
        log.info("dry run: %s -> %s with %s built; %d trainable tensors", opt.model_t, opt.model_s, opt.distill,
                 sum(len(g["params"]) for g in param_groups))
        return None

    if is_main_process():
        os.makedirs(folder, exist_ok=True)
    save_options(opt, folder)
    logger = RunLogger(folder, os.path.join(opt.tb_path, opt.model_name), enabled=is_main_process())
    teacher_acc, _, _ = validate(data.val_loader, teacher, torch.nn.CrossEntropyLoss(), opt)
    log.info("teacher %s accuracy: %.2f", opt.model_t, teacher_acc)

    state = RunState()
    if opt.resume:
        path = os.path.join(folder, f"{opt.model_s}_last.pth") if opt.resume == "last" else opt.resume
        state = resume(path, opt.model_s, student, optimizer, opt,
                       restore_extra=lambda ckpt: restore_method_state(ckpt, distiller, temp_module))
    elif needs.init_stage and opt.init_epochs > 0:
        run_init_stage(opt, distiller, student, teacher, data.train_loader, folder, logger, data.train_sampler)

    compute = fast.wrap_step(distill_step(student, teacher, distiller, criterion_div, weights, temperature), opt)
    if opt.distributed:
        # One DDP over student + method modules + CTKD temperature. Unused parameters are searched for: a
        # term weighted 0 by a schedule, or a module trained only in the init stage, leaves some unused.
        compute = distributed.wrap(LossStep(compute, [student, distiller, temp_module]), opt,
                                   find_unused_parameters=True)

    def extra_state():
        extra = {"distiller": distiller.state_dict(), "distill": opt.distill, "teacher_arch": opt.model_t,
                 "teacher_acc": teacher_acc}
        if temperature is not None:
            extra["temperature"] = temp_module.state_dict()
            extra["scalars"] = temperature.scalars()
        return extra

    fit(opt, arch=opt.model_s, num_classes=data.num_classes, model=student, optimizer=optimizer,
        loaders=(data.train_loader, data.val_loader), compute=compute, weights=weights,
        train_modules=[student, distiller], eval_modules=[teacher], folder=folder, logger=logger, state=state,
        extra_state=extra_state, train_sampler=data.train_sampler,
        on_epoch_start=temperature.start_epoch if temperature is not None else lambda epoch: None)
    logger.close()
    log.info("student %s best accuracy %.2f (epoch %d); run folder %s", opt.model_s, state.best_acc,
             state.best_epoch, folder)
    return state


if __name__ == "__main__":
    run_cli(main)
