"""Epoch orchestration shared by train_teacher.py and train_student.py: lr, train, validate, log, save, resume."""
import json
import logging
import os
from dataclasses import dataclass, field

import torch

from helper import distributed
from helper.distributed import is_main_process
from helper.errors import UserError
from helper.loops import train_epoch, validate
from helper.util import copy_atomic, load_checkpoint, lr_at_epoch, plain_options, save_atomic, set_lr, set_seed

log = logging.getLogger("kd")


@dataclass
class RunState:
    """What a resumed run needs besides the weights."""
    start_epoch: int = 1
    best_acc: float = 0.0
    best_epoch: int = 0
    extra: dict = field(default_factory=dict)


def save_options(opt, folder):
    """The full options as JSON next to the checkpoints."""
    if is_main_process():
        with open(os.path.join(folder, "options.json"), "w") as f:
            json.dump(plain_options(opt), f, indent=2, sort_keys=True)


def build_checkpoint(opt, arch, num_classes, model, optimizer, epoch, accuracy, state, extra):
    """A self-describing checkpoint: weights, architecture, options and training state, all plain types."""
    ckpt = {
        "model": unwrap(model).state_dict(),
        "arch": arch,
        "num_classes": num_classes,
        "dataset": opt.dataset,
        "epoch": epoch,
        "accuracy": accuracy,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "optimizer": optimizer.state_dict(),
        "opt": plain_options(opt),
    }
    ckpt.update(extra)
    return ckpt


def unwrap(model):
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def resume(path, arch, model, optimizer, opt, restore_extra=None):
    """Load weights, optimizer and counters from `path`; returns the RunState to continue from.

    The run's global batch must be the checkpoint's (check_global_batch).
    Under torchrun every rank calls this with the same file: it is read to the CPU, then copied into
    each rank's own device (no rank allocates on another's GPU).
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("arch") != arch:
        raise UserError(f"--resume {path} holds a {ckpt.get('arch')!r} model but this run trains {arch!r}")
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        raise UserError(f"--resume {path} has no optimizer state/epoch (is it a *_last.pth or ckpt_epoch_N.pth?)")
    check_global_batch(ckpt.get("opt", {}), opt, path)
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if restore_extra is not None:
        restore_extra(ckpt)
    log.info("resumed from %s at epoch %d (best acc %.2f)", path, ckpt["epoch"], ckpt.get("best_acc", 0.0))
    return RunState(start_epoch=ckpt["epoch"] + 1, best_acc=ckpt.get("best_acc", 0.0),
                    best_epoch=ckpt.get("best_epoch", 0))


def check_global_batch(saved, opt, path):
    """Refuse to resume with another global batch (processes x --batch_size) than the checkpoint's options
    `saved` record, unless opt.allow_batch_change; the same global batch on another number of processes is
    allowed, with a warning that the run no longer replays the uninterrupted one."""
    if "batch_size" not in saved:
        return
    saved_world, world = saved.get("world_size", 1), opt.world_size
    before, now = saved["batch_size"] * saved_world, opt.batch_size * world
    if before != now and not opt.allow_batch_change:
        keep = f"--batch_size {before // world}" if before % world == 0 else f"{saved_world} processes"
        raise UserError(f"--resume {path} was trained with a global batch of {before} ({saved_world} process(es) x "
                        f"--batch_size {saved['batch_size']}) but this run's is {now} ({world} x {opt.batch_size}); "
                        f"use {keep} to keep it, or pass --allow_batch_change to continue with {now}")
    if before != now:
        log.warning("resuming with a global batch of %d instead of %d (--allow_batch_change)", now, before)
    elif saved_world != world:
        log.warning("resuming on %d process(es) instead of %d with the same global batch of %d: the samples, "
                    "augmentations and negatives drawn differ from those of an uninterrupted run", world, saved_world, now)


def seed_epoch(seed, epoch, loader, sampler=None):
    """Make epoch `epoch` a pure function of the seed, so a resumed run replays it exactly.

    Under torchrun each rank adds its own offset (0 on rank 0), so ranks draw different augmentations and
    contrast negatives; the DistributedSampler keeps its shared seed, so the ranks' shares stay a partition.
    """
    seed = seed + distributed.seed_offset()
    set_seed(seed)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    for owner in (sampler, loader):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)


def fit(opt, *, arch, num_classes, model, optimizer, loaders, compute, weights, train_modules,
        eval_modules, folder, logger, state, extra_state=lambda: {}, on_epoch_start=lambda epoch: None,
        criterion=None, train_sampler=None):
    """Run epochs state.start_epoch..opt.epochs; write <arch>_best/_last and ckpt_epoch_N checkpoints.

    `compute` may be a DDP-wrapped helper.loops.LossStep (torchrun); `model` is the bare network, used for
    validation and checkpoints. Under torchrun rank 0 writes every file; after each epoch the buffers of
    `train_modules` are copied from rank 0 to all ranks, and `extra_state()` is called once per epoch on
    every rank (so it may hold collectives).
    """
    train_loader, val_loader = loaders
    criterion = criterion or torch.nn.CrossEntropyLoss()
    stats = {}
    for epoch in range(state.start_epoch, opt.epochs + 1):
        seed_epoch(opt.seed + epoch, epoch, train_loader, train_sampler)
        lr = lr_at_epoch(epoch, opt)
        set_lr(optimizer, lr)
        on_epoch_start(epoch)
        stats = train_epoch(epoch, train_loader, compute, optimizer, weights, opt, train_modules, eval_modules)
        distributed.broadcast_buffers(*train_modules)
        acc1, acc5, val_loss = validate(val_loader, model, criterion, opt)
        is_best = acc1 > state.best_acc
        if is_best:
            state.best_acc, state.best_epoch = acc1, epoch
        record = {"lr": lr, "train_acc": stats.get("acc1", 0.0), "train_loss": stats["loss"],
                  "test_acc": acc1, "test_acc_top5": acc5, "test_loss": val_loss, "best_acc": state.best_acc}
        record.update({f"train_{k}": v for k, v in stats.items() if k.startswith("loss_")})
        extra = extra_state()
        record.update(extra.get("scalars", {}))
        logger.log(epoch, record)
        log.info("epoch %d  lr %.4g  train loss %.4f acc %.2f  test acc %.2f (top-5 %.2f)  best %.2f",
                 epoch, lr, stats["loss"], stats.get("acc1", 0.0), acc1, acc5, state.best_acc)
        if is_main_process():
            extra = {k: v for k, v in extra.items() if k != "scalars"}
            last = os.path.join(folder, f"{arch}_last.pth")
            save_atomic(build_checkpoint(opt, arch, num_classes, model, optimizer, epoch, acc1, state, extra), last)
            if is_best:
                copy_atomic(last, os.path.join(folder, f"{arch}_best.pth"))
            if epoch % opt.save_freq == 0:
                copy_atomic(last, os.path.join(folder, f"ckpt_epoch_{epoch}.pth"))
        stats = record
    if is_main_process() and stats:
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"best_acc": state.best_acc, "best_epoch": state.best_epoch,
                       "last_acc": stats["test_acc"], "last_epoch": opt.epochs}, f, indent=2)
    return stats
