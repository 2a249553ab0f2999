"""Training runs: a `Trainee` is one network trained by the shared loop (a teacher, a student, or a student's init
stage), with its own optimizer, weights, random streams, checkpoints and logs; `fit` runs several trainees over one
data stream (a group of students sharing one teacher pass; a single run is a group of one)."""
import argparse
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import reprlib
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from distiller_zoo.base import Batch, Needs, StepContext
from helper import distributed
from helper.distributed import is_main_process
from helper.errors import Interrupted, NonFiniteLossError, UserError
from helper.logger import RunLog
from helper.loops import run_step, train_epoch, validate
from helper.protocol import NOT_PROTOCOL
from helper.run_folder import (discard_unsaved_epochs, repair_after_kill, resumable_checkpoints, saved_epoch,
                               started_without_checkpoint, truncate_log)
from helper.util import (AverageMeter, accuracy, copy_atomic, is_integer, load_checkpoint, lr_at_epoch, plain_options,
                         save_atomic, set_lr, set_seed, write_text_atomic)

log = logging.getLogger("kd")
FP16_SKIP_LIMIT = 50  # consecutive steps with non-finite fp16 gradients before the run counts as diverged


@dataclass
class RunState:
    """What a resumed run needs besides the weights."""
    start_epoch: int = 1
    best_acc: float = 0.0
    best_epoch: int = 0
    last_saved_epoch: int = 0


def start_writing(run_folder, opt, ckpt):
    """The first writes of a run (main process), once every check has passed: stale temporaries removed, the epochs
    of a run that --resume starts over dropped, the full options as JSON next to the checkpoints."""
    run_folder.remove_temporaries()
    if opt.resume and ckpt is None:
        discard_unsaved_epochs(run_folder.path)
    write_text_atomic(os.path.join(run_folder.path, "options.json"),
                      json.dumps(plain_options(opt), indent=2, sort_keys=True))


def purge_step(opt, ckpt):
    """The first epoch TensorBoard writes again: the one after the resumed checkpoint's, or 1 when --resume starts
    the run over (None for a new run)."""
    if ckpt is not None:
        return ckpt["epoch"] + 1
    return 1 if opt.resume else None


def unwrap(model):
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def derived_seed(seed, *tags):
    """A 63-bit seed for the stream named by `tags` (e.g. epoch, "method", rank), independent of the others."""
    text = ":".join(str(t) for t in (seed,) + tags)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def resume_path(opt, folder, arch, allow_fresh=False):
    """The checkpoint --resume names: the path given, or this run's <arch>_last.pth for a bare --resume.

    None when a bare --resume has nothing to continue and nothing can be lost: the run in `folder` stopped before its
    first checkpoint (or, with `allow_fresh`, a group's student never started); it then starts at epoch 1, said so.
    """
    if opt.resume != "last":
        return opt.resume
    path = os.path.join(folder, f"{arch}_last.pth")
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
    good_epoch = is_integer(epoch) and epoch >= 1
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


def flag_text(name, value):
    """--name value, as on a command line ('no --name' for an unset switch)."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"no --{name}"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"--{name} {value}"


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


def seed_epoch(seed, epoch, loader, sampler=None):
    """Make the data stream of epoch `epoch` a pure function of the seed, so a resumed run replays it exactly.

    Under torchrun each rank adds its own offset (0 on rank 0), so ranks draw different augmentations; the
    DistributedSampler keeps its shared seed, so the ranks' shares stay a partition.
    """
    seed = seed + distributed.seed_offset()
    set_seed(seed)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    for owner in (sampler, loader):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)


class RngStreams:
    """A trainee's own random streams, so that trainees sharing a process never draw from each other's or from the
    data stream: the global generators (CPU, and the CUDA device's) as the trainee's modules see them (dropout),
    swapped in around each of its steps, and `method`, a generator on the device for its method (CRD's negatives).
    All are reseeded every epoch from (seed, stage, epoch, rank)."""

    def __init__(self, seed, device, stage="main"):
        self.seed, self.stage = seed, stage
        self.device = torch.device(device)
        self.method = torch.Generator(device=self.device)
        self.cpu_state = self.cuda_state = None

    def reseed(self, epoch):
        rank = distributed.get_rank()
        self.cpu_state = torch.Generator().manual_seed(derived_seed(self.seed, self.stage, epoch, "model", rank)).get_state()
        if self.device.type == "cuda":
            with torch.random.fork_rng(devices=[self.device]):
                torch.cuda.manual_seed(derived_seed(self.seed, self.stage, epoch, "model-cuda", rank))
                self.cuda_state = torch.cuda.get_rng_state(self.device)
        self.method.manual_seed(derived_seed(self.seed, self.stage, epoch, "method", rank))

    @contextlib.contextmanager
    def active(self):
        saved_cpu = torch.get_rng_state()
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            saved_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if self.cuda_state is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


def count_samples(loader, batch_size):
    """Training samples one process sees per epoch (its share under torchrun); a list of batches counts its own;
    a loader that cannot tell counts full batches."""
    if hasattr(loader, "num_samples"):
        return loader.num_samples()
    if isinstance(loader, (list, tuple)):
        return sum(len(Batch.from_loader(items, "cpu")) for items in loader)
    if getattr(loader, "sampler", None) is not None:
        return len(loader.sampler)
    return len(loader) * batch_size


class Trainee:
    """One network trained by the shared loop in the main stage: a teacher (train_teacher.py) or a student.

    compute(batch, teachers, ctx) -> (logits, {term: loss}) is the per-batch computation (possibly a DDP-wrapped
    helper.loops.LossStep); weights(epoch, iteration, iterations) -> {term: weight}. `model` is the bare network
    (checkpoints), `eval_model` what validation runs (the model itself, or e.g. SimKD's student with the teacher's
    classifier). `extra_state()` returns what the checkpoint holds besides the model and optimizer (method state,
    plug-ins) and, under "scalars", numbers for the logs; it is called once per epoch on every rank.
    """

    def __init__(self, opt, *, arch, num_classes, model, optimizer, compute, weights, train_modules, folder, logger,
                 val_loader, state=None, eval_modules=(), eval_model=None, needs=Needs(), plugins=(),
                 extra_state=None, script="train_teacher", label="", protocol=None, scaler=None, record=False):
        self.opt, self.arch, self.num_classes = opt, arch, num_classes
        self.model, self.optimizer, self.compute, self.weights = model, optimizer, compute, weights
        self.train_modules, self.eval_modules = list(train_modules), list(eval_modules)
        self.eval_model = eval_model if eval_model is not None else model
        self.folder, self.logger, self.val_loader = folder, logger, val_loader
        self.state = state or RunState()
        self.needs, self.plugins = needs, list(plugins)
        self.extra_state = extra_state or (lambda: {})
        self.script, self.label, self.protocol, self.scaler = script, label, protocol or {}, scaler
        self.epochs = opt.epochs
        self.log = RunLog(label)
        self.rng = RngStreams(opt.seed, opt.device, stage="main")
        self.failed = None
        self.epoch_seconds = []
        self.last_record = {}
        self.fp16_skips = 0
        self.history = [] if record else None  # per-step losses, kept when asked (tests, benchmarks)

    # ---- the epoch ------------------------------------------------------------------------------------------------
    def active(self, epoch):
        return self.failed is None and self.state.start_epoch <= epoch <= self.epochs

    def begin_epoch(self, epoch, loader):
        for module in self.eval_modules:
            module.eval()
        for module in self.train_modules:
            module.train()
        self.epoch = epoch
        self.lr = lr_at_epoch(epoch, self.opt)
        set_lr(self.optimizer, self.lr)
        for plugin in self.plugins:
            plugin.start_epoch(epoch)
        self.rng.reseed(epoch)
        self.skip_partial = self.needs.full_batches
        if self.skip_partial:
            self.iters = count_samples(loader, self.opt.batch_size) // self.opt.batch_size
        else:
            self.iters = len(loader)
        self.loader_iters = len(loader)
        self.meters = defaultdict(AverageMeter)
        self.seen = 0
        self.epoch_skips = 0
        self.epoch_start = time.perf_counter()

    def step(self, batch, teachers, iteration):
        """Train on one batch (skipped when partial and the method needs full batches)."""
        n = len(batch)
        if self.skip_partial and n < self.opt.batch_size:
            return
        try:
            ctx = StepContext(epoch=self.epoch, iteration=iteration, iters_per_epoch=self.iters,
                              generator=self.rng.method)
            with self.rng.active():
                self.optimizer.zero_grad(set_to_none=True)  # before the step: no stale grads across CUDA-graph steps
                task, distill, logits, terms = run_step(self.compute, batch, self.weights(self.epoch, iteration,
                                                                                          self.iters), teachers, ctx)
                loss = task if distill is None else distill if task is None else task + distill
                self._backward_and_step(task, distill, loss)
            self._record(loss, logits, terms, batch, n)
            if (iteration + 1) % max(int(self.opt.print_freq), 1) == 0 or iteration + 1 == self.loader_iters:
                self._check_finite(iteration + 1)
                self._progress(iteration + 1)
        except NonFiniteLossError as e:
            self.fail(str(e))

    def _backward_and_step(self, task, distill, loss):
        for plugin in self.plugins:
            if plugin.backward_and_step(task, distill, self.optimizer):
                return
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < scale:  # the scaler found inf/NaN gradients and skipped this step
            self.fp16_skips += 1
            self.epoch_skips += 1
            if self.fp16_skips >= FP16_SKIP_LIMIT:
                raise NonFiniteLossError(self._stopped(f"gradients were non-finite for {self.fp16_skips} steps in a "
                                                       f"row under --amp fp16 (epoch {self.epoch})"))
        else:
            self.fp16_skips = 0

    def _record(self, loss, logits, terms, batch, n):
        self.seen += n
        if self.history is not None:
            self.history.append(loss.detach())
        self.meters["loss"].update(loss.detach(), n)
        for name, value in terms.items():
            self.meters[f"loss_{name}"].update(value, n)
        if logits is not None:
            acc1, acc5 = accuracy(logits.detach(), batch.targets, topk=(1, 5))
            self.meters["acc1"].update(acc1, n)
            self.meters["acc5"].update(acc5, n)

    def _check_finite(self, iteration):
        if not distributed.all_finite(self.meters["loss"].sum):
            terms = ", ".join(f"{k}={m.avg:.4g}" for k, m in self.meters.items() if k.startswith("loss_"))
            raise NonFiniteLossError(self._stopped(f"loss became non-finite in epoch {self.epoch} by iteration "
                                                   f"{iteration} ({terms})"))

    def _progress(self, iteration):
        terms = " ".join(f"{k[5:]} {m.avg:.4f}" for k, m in self.meters.items() if k.startswith("loss_"))
        acc = f" acc {self.meters['acc1'].avg:.2f}" if "acc1" in self.meters else ""
        throughput = self.seen * self.opt.world_size / max(time.perf_counter() - self.epoch_start, 1e-9)
        self.log.info("epoch %d [%d/%d] loss %.4f (%s)%s | %.0f img/s", self.epoch, iteration, self.loader_iters,
                      self.meters["loss"].avg, terms, acc, throughput)

    def kept(self):
        """What this trainee leaves to resume from: the last good checkpoint, or that none was written yet."""
        if self.state.last_saved_epoch:
            return f"the last good checkpoint ({self.arch}_last.pth, epoch {self.state.last_saved_epoch}) is kept"
        return "no checkpoint was written yet"

    def _stopped(self, reason):
        """`reason` plus what is kept."""
        who = f"{self.label}: " if self.label else ""
        return f"{who}{reason}; stopping, {self.kept()}"

    def end_epoch(self, epoch, seconds):
        """Validate, log, check for divergence, and write this epoch's checkpoints."""
        try:
            self._end_epoch(epoch, seconds)
        except NonFiniteLossError as e:
            self.fail(str(e))

    def _end_epoch(self, epoch, seconds):
        stats = distributed.reduce_meters(self.meters, self.opt.device)
        if not math.isfinite(stats.get("loss", 0.0)):
            raise NonFiniteLossError(self._stopped(f"the training loss of epoch {epoch} is not finite"))
        distributed.broadcast_buffers(*self.train_modules)
        acc1, acc5, val_loss = validate(self.val_loader, self.eval_model, torch.nn.CrossEntropyLoss(), self.opt)
        if not math.isfinite(val_loss) or not weights_finite(self.model):
            what = "test loss" if not math.isfinite(val_loss) else "weights"
            raise NonFiniteLossError(self._stopped(f"the run diverged in epoch {epoch}: non-finite {what}"))
        is_best = self.state.best_epoch == 0 or acc1 > self.state.best_acc  # the first epoch is the best so far
        if is_best:
            self.state.best_acc, self.state.best_epoch = acc1, epoch
        self.epoch_seconds.append(seconds)
        throughput = self.seen * self.opt.world_size / max(seconds, 1e-9)
        eta = sum(self.epoch_seconds) / len(self.epoch_seconds) * (self.epochs - epoch)
        record = {"lr": self.lr, "train_acc": stats.get("acc1", 0.0), "train_loss": stats["loss"],
                  "test_acc": acc1, "test_acc_top5": acc5, "test_loss": val_loss, "best_acc": self.state.best_acc,
                  "epoch_time": seconds, "images_per_s": throughput, "eta_s": eta}
        record.update({f"train_{k}": v for k, v in stats.items() if k.startswith("loss_")})
        if self.scaler is not None:
            record["fp16_skipped_steps"] = self.epoch_skips
        extra = self.extra_state()
        record.update(extra.pop("scalars", {}))
        self.logger.log(epoch, record)  # before the checkpoint: a resume drops records past the checkpoint's epoch
        self.log.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.2f  test acc %.2f (top-5 %.2f)  best %.2f  "
                      "| %.1f s, %.0f img/s, ETA %s", epoch, self.epochs, self.lr, stats["loss"],
                      stats.get("acc1", 0.0), acc1, acc5, self.state.best_acc, seconds, throughput, format_eta(eta))
        if is_main_process():
            self._save(epoch, acc1, is_best, extra)
        self.state.last_saved_epoch = epoch
        self.last_record = record

    def _save(self, epoch, accuracy_, is_best, extra):
        """<arch>_last.pth atomically, then copies to _best and ckpt_epoch_N (repaired on resume if interrupted)."""
        last = os.path.join(self.folder, f"{self.arch}_last.pth")
        save_atomic(self.checkpoint(epoch, accuracy_, extra), last)
        self.state.last_saved_epoch = epoch  # a resume continues from here and redoes the copies below if cut
        if is_best:
            copy_atomic(last, os.path.join(self.folder, f"{self.arch}_best.pth"))
        if epoch % self.opt.save_freq == 0:
            copy_atomic(last, os.path.join(self.folder, f"ckpt_epoch_{epoch}.pth"))

    def checkpoint(self, epoch, accuracy_, extra):
        """A self-describing checkpoint: weights, architecture, options and training state, all plain types."""
        ckpt = {"model": unwrap(self.model).state_dict(), "arch": self.arch, "num_classes": self.num_classes,
                "dataset": self.opt.dataset, "epoch": epoch, "accuracy": accuracy_, "best_acc": self.state.best_acc,
                "best_epoch": self.state.best_epoch, "optimizer": self.optimizer.state_dict(),
                "opt": plain_options(self.opt), "script": self.script}
        if self.scaler is not None:
            ckpt["scaler"] = self.scaler.state_dict()
        ckpt.update(extra)
        return ckpt

    # ---- resume, failure, results ---------------------------------------------------------------------------------
    def resume_from(self, ckpt):
        """Continue after a checkpoint whose state restore_state put back: its counters; repair the folder."""
        self.state = RunState(start_epoch=ckpt["epoch"] + 1, best_acc=ckpt.get("best_acc", 0.0),
                              best_epoch=ckpt.get("best_epoch", 0), last_saved_epoch=ckpt["epoch"])
        self.last_record = {"test_acc": ckpt.get("accuracy")}  # results.json, even when no epoch is left to run
        if is_main_process():
            repair_after_kill(self.folder, self.arch, ckpt, self.opt.save_freq)
            truncate_log(self.folder, ckpt["epoch"])
        self.log.info("resumed at epoch %d (best acc %.2f at epoch %d)", ckpt["epoch"], self.state.best_acc,
                      self.state.best_epoch)

    def fail(self, message):
        """Stop this trainee only: one line, the error in results.json; the last good checkpoint stays."""
        self.failed = message
        self.log.error("error: %s", message)
        self.write_results()

    def write_results(self):
        if not is_main_process():
            return
        results = {"status": "failed" if self.failed else "finished", "best_acc": self.state.best_acc,
                   "best_epoch": self.state.best_epoch, "last_acc": self.last_record.get("test_acc"),
                   "last_epoch": self.state.last_saved_epoch, "epochs": self.epochs}
        if self.failed:
            results["error"] = self.failed
        results["protocol"] = self.protocol
        write_text_atomic(os.path.join(self.folder, "results.json"), json.dumps(results, indent=2))

    def finish(self):
        """After the last epoch: results.json (a failed trainee wrote its own when it stopped)."""
        if self.failed is None and self.last_record:
            self.write_results()
        self.logger.close()


class InitTrainee(Trainee):
    """A student's init stage (AB, FT, FSP): its init modules trained for --init_epochs through the same loop;
    no validation or per-epoch checkpoint; <model_s>_init.pth is written at the end."""

    def __init__(self, opt, *, distiller, student, label="", **kwargs):
        super().__init__(opt, label=label, **kwargs)
        self.distiller, self.student = distiller, student
        self.epochs = opt.init_epochs
        self.rng = RngStreams(opt.seed, opt.device, stage="init")

    def _end_epoch(self, epoch, seconds):
        stats = distributed.reduce_meters(self.meters, self.opt.device)
        if not math.isfinite(stats.get("loss", 0.0)):
            raise NonFiniteLossError(self._stopped(f"the init-stage loss of epoch {epoch} is not finite"))
        distributed.broadcast_buffers(self.student, self.distiller)
        self.logger.log(epoch, {"init_loss": stats["loss"], "epoch_time": seconds}, kind="init")
        self.log.info("init epoch %d/%d  loss %.4f  | %.1f s", epoch, self.epochs, stats["loss"], seconds)
        self.last_record = {"init_loss": stats["loss"]}

    def _stopped(self, reason):
        who = f"{self.label}: " if self.label else ""
        return f"{who}{reason}; stopping (init stage, no checkpoint written)"

    def finish(self):
        if self.failed is not None or not self.last_record:
            return
        self.distiller.on_init_end()
        if is_main_process():
            save_atomic({"model": unwrap(self.student).state_dict(), "distiller": self.distiller.state_dict(),
                         "arch": self.arch, "script": self.script},
                        os.path.join(self.folder, f"{self.arch}_init.pth"))

    def write_results(self):
        """An init stage that fails makes its student fail (the caller copies `failed`)."""


def weights_finite(model):
    """True when every floating parameter and buffer of `model` is finite (one host sync)."""
    tensors = [t for t in list(unwrap(model).parameters()) + list(unwrap(model).buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all().item())


def format_eta(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def fit(trainees, loader, *, device, seed, teacher=None, sampler=None, no_progress=None, stage="main"):
    """Run the epochs of every trainee over one data stream (run_epochs), then finish each.

    Ctrl-C raises Interrupted and a full disk a UserError, both saying which checkpoints are kept.
    """
    try:
        run_epochs(trainees, loader, device=device, seed=seed, teacher=teacher, sampler=sampler,
                   no_progress=no_progress, stage=stage)
        for trainee in trainees:
            trainee.finish()
    except KeyboardInterrupt:
        raise Interrupted(kept_checkpoints(trainees)) from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise UserError(f"the disk under --model_path is full ({e.strerror}); {kept_checkpoints(trainees)}; free some "
                        "space, then rerun with --resume to continue") from None
    return trainees


def run_epochs(trainees, loader, *, device, seed, teacher, sampler, no_progress, stage):
    """Epoch e of every trainee sees the same batches.

    The data stream of main-stage epoch e is seeded with seed + e (init stage: seed - e), as a single run's.
    A trainee runs from its state.start_epoch to its own last epoch; one that fails stops alone.
    """
    first = min(t.state.start_epoch for t in trainees)
    last = max(t.epochs for t in trainees)
    for epoch in range(first, last + 1):
        active = [t for t in trainees if t.active(epoch)]
        if not active:
            continue
        seed_epoch(seed + epoch if stage == "main" else seed - epoch, epoch, loader, sampler)
        seconds = train_epoch(epoch, loader, active, device, teacher=teacher, desc=stage, no_progress=no_progress)
        for trainee in active:
            if trainee.failed is None:
                trainee.end_epoch(epoch, seconds)


def kept_checkpoints(trainees):
    """What each trainee of a stopped fit leaves to resume from (labelled in a group)."""
    return "; ".join(f"{t.label}: {t.kept()}" if t.label else t.kept() for t in trainees)

