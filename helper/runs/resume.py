"""`--resume`: find the checkpoint to continue, check that it belongs to this run (script, architecture, counters,
flags, global batch, epochs), and put its state back before anything is written."""
import argparse
import logging
import os
import reprlib

from helper.engine.lr import lr_at_epoch
from helper.engine.trainee import unwrap
from helper.errors import UserError
from helper.runs.files import load_checkpoint
from helper.runs.folder import resumable_checkpoints, saved_epoch, started_without_checkpoint
from helper.runs.protocol import NOT_PROTOCOL
from helper.util import flag_text, is_integer, plain_options

log = logging.getLogger("kd")


def resume_path(opt, folder, arch, allow_fresh=False):
    """The checkpoint --resume names: the path given, or for a bare --resume this run's <arch>_step.pth when a stop
    signal left one in the epoch after <arch>_last.pth's, else <arch>_last.pth.

    None when a bare --resume has nothing to continue and nothing can be lost: the run in `folder` stopped before its
    first checkpoint (or, with `allow_fresh`, a group's student never started); it then starts at epoch 1, said so.
    """
    if opt.resume != "last":
        return opt.resume
    path = os.path.join(folder, f"{arch}_last.pth")
    step = os.path.join(folder, f"{arch}_step.pth")
    if os.path.exists(step) and (saved_epoch(step) or 0) >= (saved_epoch(path) or 0):
        return step  # stopped in the middle of the epoch after <arch>_last.pth's
    if os.path.exists(path):
        return path
    others = [os.path.basename(p) for p in resumable_checkpoints(folder)]
    if others:
        raise UserError(f"--resume: {folder} holds no {arch}_last.pth but {', '.join(others)}; resume from one of "
                        "them with --resume PATH")
    if not (allow_fresh or started_without_checkpoint(folder)):
        raise UserError(f"--resume: no checkpoint {path} to resume from; run without --resume to start it")
    log.warning("--resume: %s holds no checkpoint yet; starting at epoch 1 (nothing to lose)", folder)
    return None


def read_resume_checkpoint(path, folder, arch, opt, script, check=None):
    """Load and validate a checkpoint to resume into the run folder `folder`, before anything is written (one-line
    UserErrors).

    It must hold `arch`, have been written by `script` (train_teacher / train_student), hold whole counters, keep the
    global batch (check_global_batch), pass `check(ckpt)` (e.g. the same --distill and teacher), keep the flags that
    define the run (check_same_run) and leave no later epoch behind (check_epochs).
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"--resume {path} is not a checkpoint of this repository (no 'model' entry)")
    written_by = ckpt.get("script") or ("train_student" if "distiller" in ckpt else "train_teacher")
    if written_by != script:
        raise UserError(f"--resume {path} was written by {written_by}.py, not {script}.py; resume it with "
                        f"{written_by}.py, or start this run without --resume")
    if ckpt.get("arch") != arch:
        raise UserError(f"--resume {path} holds a {ckpt.get('arch')!r} model but this run trains {arch!r}")
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        raise UserError(f"--resume {path} has no optimizer state/epoch (is it a *_last.pth or ckpt_epoch_N.pth?)")
    check_counters(ckpt, path)
    check_global_batch(ckpt.get("opt", {}), opt, path)
    if check is not None:
        check(ckpt)
    check_same_run(ckpt.get("opt", {}), opt, path)
    check_trained_learning_rates(ckpt, opt, path)
    check_epochs(ckpt, path, folder, arch, opt)
    return ckpt


def check_counters(ckpt, path):
    """The counters a resume continues from must be whole; otherwise the checkpoint is damaged (one line)."""
    epoch, best_epoch, best_acc = ckpt["epoch"], ckpt.get("best_epoch", 0), ckpt.get("best_acc", 0.0)
    good_epoch = is_integer(epoch) and epoch >= (0 if "step" in ckpt else 1)  # a step checkpoint of epoch 1: 0
    fields = [("epoch", good_epoch, "a whole number >= 1"),
              ("best_epoch", good_epoch and is_integer(best_epoch) and 0 <= best_epoch <= epoch,
               "a whole number up to its epoch"),
              ("best_acc", isinstance(best_acc, (int, float)) and not isinstance(best_acc, bool), "a number"),
              ("opt", isinstance(ckpt.get("opt", {}), dict), "the run's options")]
    for key, good, expected in fields:
        if not good:
            raise UserError(f"--resume {path} is damaged: its {key!r} is {reprlib.repr(ckpt.get(key))}, not "
                            f"{expected}; resume from another checkpoint of the run (e.g. a ckpt_epoch_N.pth), or "
                            "start over with --overwrite instead of --resume")


def run_defining_flags(options):
    """The flags that define a run: those results.json records as its protocol, and the seed. The global batch has
    its own check (check_global_batch), and --epochs may change as long as the trained epochs keep their learning
    rates (check_trained_learning_rates)."""
    free = (NOT_PROTOCOL - {"seed"}) | {"batch_size", "epochs"}
    return {name: value for name, value in options.items() if name not in free}


def check_trained_learning_rates(ckpt, opt, path):
    """Another --epochs on resume must leave the learning rate of every epoch already trained as it was: under
    --lr_schedule cosine, --epochs sets every epoch's lr."""
    saved_epochs = ckpt.get("opt", {}).get("epochs")
    if not isinstance(saved_epochs, int) or saved_epochs == opt.epochs:
        return
    trained_with = argparse.Namespace(**{**vars(opt), "epochs": saved_epochs})
    changed = [e for e in range(1, ckpt["epoch"] + 1) if lr_at_epoch(e, trained_with) != lr_at_epoch(e, opt)]
    if changed:
        raise UserError(f"--resume {path} was trained with --epochs {saved_epochs}, but this run has --epochs "
                        f"{opt.epochs}, which changes the learning rate of its trained epoch {changed[0]} (under "
                        f"--lr_schedule {opt.lr_schedule}, --epochs sets every epoch's lr); resume with --epochs "
                        f"{saved_epochs}, or start a new run with another --trial")


def check_same_run(saved, opt, path):
    """Refuse to resume with other values of the flags that define the run than the checkpoint's options `saved`
    (results.json would record the new values as if the whole run had used them)."""
    before, now = run_defining_flags(saved), run_defining_flags(plain_options(opt))
    changed = [name for name in sorted(before.keys() & now.keys()) if before[name] != now[name]]
    if not changed:
        return
    raise UserError(f"--resume {path} was trained with {' '.join(flag_text(n, before[n]) for n in changed)}, but this "
                    f"run has {' '.join(flag_text(n, now[n]) for n in changed)}; resume with the flags it was "
                    "trained with, or start a new run with another --trial")


def check_epochs(ckpt, path, folder, arch, opt):
    """A resume must end no earlier than the checkpoint's epoch, nor than the epoch the folder's <arch>_last.pth
    already holds: a run ending before it would leave checkpoints later than the epochs results.json reports."""
    epoch = ckpt["epoch"]
    if epoch > opt.epochs:
        raise UserError(f"--resume {path} is at epoch {epoch}, beyond --epochs {opt.epochs}; pass --epochs {epoch} "
                        "or more to continue it, or resume from a checkpoint of an earlier epoch")
    last = os.path.join(folder, f"{arch}_last.pth")
    reached = None if os.path.abspath(path) == os.path.abspath(last) else saved_epoch(last)
    if reached is not None and reached > opt.epochs:
        raise UserError(f"--resume {path} (epoch {epoch}) with --epochs {opt.epochs} would end the run before epoch "
                        f"{reached}, which {last} already holds; pass --epochs {reached} or more to replay up to it, "
                        "or pick another folder with --trial")


def resume_checkpoint(opt, folder, arch, script, model, optimizer, scaler=None, check=None, restore_extra=None,
                      allow_fresh=False):
    """The validated checkpoint --resume continues from (every rank reads it), restored into the run before anything
    is written; None when the run starts at epoch 1 (no --resume, or nothing to continue: see resume_path)."""
    path = resume_path(opt, folder, arch, allow_fresh) if opt.resume else None
    if path is None:
        return None
    ckpt = read_resume_checkpoint(path, folder, arch, opt, script, check)
    restore_state(ckpt, path, model, optimizer, scaler, restore_extra)
    started = ckpt.get("opt", {}).get("epochs")
    if is_integer(started) and started != opt.epochs:
        log.info("--resume: --epochs %d, where the run was started with --epochs %d: it now trains to epoch %d",
                 opt.epochs, started, opt.epochs)
    return ckpt


def restore_state(ckpt, path, model, optimizer, scaler=None, restore_extra=None):
    """Put back weights, optimizer, fp16 scaler and `restore_extra(ckpt)` (method state) from a validated
    checkpoint, before anything is written; a part that does not fit this run is one line."""
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        if restore_extra is not None:
            restore_extra(ckpt)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())
        raise UserError(f"--resume {path} does not fit this run ({reason[:300]}); resume with the flags it was "
                        "trained with") from None


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
