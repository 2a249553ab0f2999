"""Trainees: a `Trainee` is one network trained by the shared loop (a teacher, a student, or a student's init stage),
with its own optimizer, weights and random streams; `fit` runs several trainees over one data stream (a group of
students sharing one teacher pass; a single run is a group of one).

The engine writes no file: what a trainee records (epoch scalars, checkpoints, results) goes to its `record`, a
helper.runs.record.RunRecord for a run folder or a MemoryRecord here for runs in memory (tests, benchmarks)."""
import contextlib
import errno
import hashlib
import logging
import math
import signal
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from distiller_zoo.base import Batch, Needs, StepContext
from helper.engine import distributed
from helper.engine.distributed import is_main_process
from helper.engine.loop import train_epoch, validate
from helper.engine.lr import lr_at_epoch, set_lr
from helper.engine.meters import AverageMeter, accuracy, meters_state, restore_meters
from helper.engine.preemption import StepStop
from helper.engine.step import run_step
from helper.errors import Interrupted, NonFiniteLossError, Preempted, UserError
from helper.util import RunLog, plain_options, set_seed

log = logging.getLogger("kd")


FP16_SKIP_LIMIT = 50  # consecutive steps with non-finite fp16 gradients before the run counts as diverged


@dataclass
class RunState:
    """What a resumed run needs besides the weights."""
    start_epoch: int = 1
    best_acc: float = 0.0
    best_epoch: int = 0
    last_saved_epoch: int = 0


def unwrap(model):
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def derived_seed(seed, *tags):
    """A 63-bit seed for the stream named by `tags` (e.g. epoch, "method", rank), independent of the others."""
    text = ":".join(str(t) for t in (seed,) + tags)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


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

    def state_dict(self):
        return {"cpu": self.cpu_state, "cuda": self.cuda_state, "method": self.method.get_state()}

    def load_state_dict(self, state):
        self.cpu_state, self.cuda_state = state["cpu"], state["cuda"]
        self.method.set_state(state["method"])

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
    helper.engine.step.LossStep); weights(epoch, iteration, iterations) -> {term: weight}. `model` is the bare network
    (checkpoints), `eval_model` what validation runs (the model itself, or e.g. SimKD's student with the teacher's
    classifier). `extra_state()` returns what the checkpoint holds besides the model and optimizer (method state,
    plug-ins) and, under "scalars", numbers for the logs; it is called once per epoch on every rank.
    """

    def __init__(self, opt, *, arch, num_classes, model, optimizer, compute, weights, train_modules, val_loader,
                 record=None, state=None, eval_modules=(), eval_model=None, needs=Needs(), plugins=(),
                 extra_state=None, label="", scaler=None, keep_history=False):
        self.opt, self.arch, self.num_classes = opt, arch, num_classes
        self.model, self.optimizer, self.compute, self.weights = model, optimizer, compute, weights
        self.train_modules, self.eval_modules = list(train_modules), list(eval_modules)
        self.eval_model = eval_model if eval_model is not None else model
        self.record = record if record is not None else MemoryRecord()
        self.val_loader = val_loader
        self.state = state or RunState()
        self.needs, self.plugins = needs, list(plugins)
        self.extra_state = extra_state or (lambda: {})
        self.label, self.scaler = label, scaler
        self.epochs = opt.epochs
        self.log = RunLog(label)
        self.rng = RngStreams(opt.seed, opt.device, stage="main")
        self.failed = None
        self.epoch_seconds = []
        self.last_record = {}
        self.fp16_skips = 0
        self.history = [] if keep_history else None  # per-step losses, kept when asked (tests, benchmarks)
        # the current epoch's state, set anew by begin_epoch
        self.epoch, self.lr, self.iters, self.loader_iters, self.skip_partial = 0, None, 0, 0, False
        self.meters, self.seen, self.epoch_skips, self.epoch_start = defaultdict(AverageMeter), 0, 0, None
        self.first_step, self.resume_step, self.carried_seconds = 0, None, 0.0  # a resume from a step checkpoint
        self.saved_step = None  # (epoch, next step) of the step checkpoint written when a stop signal came

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
        self.first_step = 0
        if self.resume_step is not None and self.resume_step["epoch"] == epoch:
            self._continue_epoch(self.resume_step)
        self.resume_step = None

    def _continue_epoch(self, step):
        """Put back this rank's epoch state of a step checkpoint: meters, counters, random streams, plug-ins."""
        mine = step["ranks"][distributed.get_rank()]
        restore_meters(mine["meters"], self.meters)
        self.seen, self.epoch_skips, self.fp16_skips = mine["seen"], mine["epoch_skips"], mine["fp16_skips"]
        self.rng.load_state_dict(mine["rng"])
        for plugin, state in zip(self.plugins, mine["plugins"]):
            plugin.load_epoch_state(state)
        self.first_step, self.carried_seconds = step["iteration"], mine["seconds"]
        self.log.info("continuing epoch %d at step %d of %d", self.epoch, step["iteration"] + 1, self.loader_iters)

    def step_checkpoint(self, epoch, next_step, seconds):
        """A checkpoint in the middle of `epoch`, before step `next_step` (0-based): the last epoch's counters, the
        state now, and every rank's epoch state (gathered: call on every rank); None on ranks other than 0."""
        mine = {"meters": meters_state(self.meters), "seen": self.seen, "epoch_skips": self.epoch_skips,
                "fp16_skips": self.fp16_skips, "rng": self.rng.state_dict(),
                "plugins": [plugin.epoch_state() for plugin in self.plugins],
                "seconds": self.carried_seconds + seconds}
        ranks = distributed.gather_objects(mine)
        extra = self.extra_state()  # on every rank: plug-ins' scalars may be collectives
        extra.pop("scalars", None)
        if not is_main_process():
            return None
        ckpt = self.checkpoint(epoch - 1, self.last_record.get("test_acc"), extra)
        ckpt["step"] = {"epoch": epoch, "iteration": next_step, "ranks": ranks}
        return ckpt

    def save_step(self, epoch, next_step, seconds):
        """Write the step checkpoint (main process); the epoch's end replaces it with <arch>_last.pth."""
        next_step = max(next_step, self.first_step)  # stopped again before reaching the step it resumed at
        ckpt = self.step_checkpoint(epoch, next_step, seconds)
        if ckpt is not None:
            self.record.save_step(ckpt)
        self.saved_step = (epoch, next_step)

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
        if self.saved_step:
            epoch, next_step = self.saved_step
            return f"{self.arch}_step.pth holds epoch {epoch} up to step {next_step} of {self.loader_iters}"
        if self.state.last_saved_epoch:
            return f"the last good checkpoint ({self.arch}_last.pth, epoch {self.state.last_saved_epoch}) is kept"
        return "no checkpoint was written yet"

    def _stopped(self, reason):
        """`reason` plus what is kept."""
        who = f"{self.label}: " if self.label else ""
        return f"{who}{reason}; stopping, {self.kept()}"

    def end_epoch(self, epoch, seconds):
        """Validate, log, check for divergence, and write this epoch's checkpoints."""
        seconds, self.carried_seconds = seconds + self.carried_seconds, 0.0
        try:
            self._end_epoch(epoch, seconds)
        except NonFiniteLossError as e:
            self.fail(str(e))

    def _end_epoch(self, epoch, seconds):
        stats = distributed.reduce_meters(self.meters, self.opt.device)
        if not math.isfinite(stats.get("loss", 0.0)):
            raise NonFiniteLossError(self._stopped(f"the training loss of epoch {epoch} is not finite"))
        distributed.broadcast_buffers(*self.train_modules)
        test_start = time.perf_counter()
        acc1, acc5, val_loss = validate(self.val_loader, self.eval_model, torch.nn.CrossEntropyLoss(), self.opt)
        test_seconds = time.perf_counter() - test_start
        if not math.isfinite(val_loss) or not weights_finite(self.model):
            what = "test loss" if not math.isfinite(val_loss) else "weights"
            raise NonFiniteLossError(self._stopped(f"the run diverged in epoch {epoch}: non-finite {what}"))
        is_best = self.state.best_epoch == 0 or acc1 > self.state.best_acc  # the first epoch is the best so far
        if is_best:
            self.state.best_acc, self.state.best_epoch = acc1, epoch
        self.epoch_seconds.append(seconds + test_seconds)  # the ETA counts training and testing
        throughput = self.seen * self.opt.world_size / max(seconds, 1e-9)
        eta = sum(self.epoch_seconds) / len(self.epoch_seconds) * (self.epochs - epoch)
        record = {"lr": self.lr, "train_acc": stats.get("acc1", 0.0), "train_loss": stats["loss"],
                  "test_acc": acc1, "test_acc_top5": acc5, "test_loss": val_loss, "best_acc": self.state.best_acc,
                  "epoch_time": seconds, "test_time": test_seconds, "images_per_s": throughput, "eta_s": eta}
        record.update({f"train_{k}": v for k, v in stats.items() if k.startswith("loss_")})
        if self.scaler is not None:
            record["fp16_skipped_steps"] = self.epoch_skips
        extra = self.extra_state()
        record.update(extra.pop("scalars", {}))
        self.record.log(epoch, record)  # before the checkpoint: a resume drops records past the checkpoint's epoch
        self.log.info("epoch %d/%d  lr %.4g  train loss %.4f acc %.2f  test acc %.2f (top-5 %.2f)  best %.2f  "
                      "| %.1f s train + %.1f s test, %.0f img/s, ETA %s", epoch, self.epochs, self.lr, stats["loss"],
                      stats.get("acc1", 0.0), acc1, acc5, self.state.best_acc, seconds, test_seconds, throughput,
                      format_eta(eta))
        if is_main_process():
            self.record.save_last(self.checkpoint(epoch, acc1, extra))
            self.state.last_saved_epoch = epoch  # a resume continues from here and redoes the copies if cut
            self.record.copy_last(epoch, is_best)
        self.state.last_saved_epoch = epoch
        self.last_record = record

    def checkpoint(self, epoch, accuracy_, extra):
        """A self-describing checkpoint: weights, architecture, options and training state, all plain types."""
        ckpt = {"model": unwrap(self.model).state_dict(), "arch": self.arch, "num_classes": self.num_classes,
                "dataset": self.opt.dataset, "epoch": epoch, "accuracy": accuracy_, "best_acc": self.state.best_acc,
                "best_epoch": self.state.best_epoch, "optimizer": self.optimizer.state_dict(),
                "opt": plain_options(self.opt)}
        if self.scaler is not None:
            ckpt["scaler"] = self.scaler.state_dict()
        ckpt.update(extra)
        return ckpt

    # ---- resume, failure, results ---------------------------------------------------------------------------------
    def resume_from(self, ckpt):
        """Continue after a checkpoint whose state restore_state put back: its counters (the record repairs its
        files)."""
        self.state = RunState(start_epoch=ckpt["epoch"] + 1, best_acc=ckpt.get("best_acc", 0.0),
                              best_epoch=ckpt.get("best_epoch", 0), last_saved_epoch=ckpt["epoch"])
        self.last_record = {"test_acc": ckpt.get("accuracy")}  # results.json, even when no epoch is left to run
        self.resume_step = ckpt.get("step")  # a step checkpoint: the epoch continues at its step
        if is_main_process():
            self.record.resumed(ckpt)
        where = (f"in epoch {self.resume_step['epoch']} before step {self.resume_step['iteration'] + 1}"
                 if self.resume_step else f"at epoch {ckpt['epoch']}")
        self.log.info("resumed %s (best acc %.2f at epoch %d)", where, self.state.best_acc, self.state.best_epoch)

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
        self.record.results(results)

    def finish(self):
        """After the last epoch: results.json (a failed trainee wrote its own when it stopped)."""
        if self.failed is None and self.last_record:
            self.write_results()
        self.record.close()


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
        self.record.log(epoch, {"init_loss": stats["loss"], "epoch_time": seconds}, kind="init")
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
            self.record.save_init({"model": unwrap(self.student).state_dict(),
                                   "distiller": self.distiller.state_dict(), "arch": self.arch})

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


def fit(trainees, loader, *, device, seed, teacher=None, sampler=None, no_progress=None, stage="main", stop=None):
    """Run the epochs of every trainee over one data stream (run_epochs), then finish each.

    Ctrl-C raises Interrupted and a full disk a UserError, both saying which checkpoints are kept; a stop signal
    (`stop`, helper.engine.preemption) Preempted, after every trainee wrote a step checkpoint.
    """
    try:
        run_epochs(trainees, loader, device=device, seed=seed, teacher=teacher, sampler=sampler,
                   no_progress=no_progress, stage=stage, stop=stop)
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


def run_epochs(trainees, loader, *, device, seed, teacher, sampler, no_progress, stage, stop=None):
    """Epoch e of every trainee sees the same batches.

    The data stream of main-stage epoch e is seeded with seed + e (init stage: seed - e), as a single run's.
    A trainee runs from its state.start_epoch to its own last epoch; one that fails stops alone. A stop signal
    ends the run after the step it came in (step checkpoints) or, at an epoch's end, after its checkpoints.
    """
    first = min(t.state.start_epoch for t in trainees)
    last = max(t.epochs for t in trainees)
    for epoch in range(first, last + 1):
        active = [t for t in trainees if t.active(epoch)]
        if not active:
            continue
        seed_epoch(seed + epoch if stage == "main" else seed - epoch, epoch, loader, sampler)
        try:
            seconds = train_epoch(epoch, loader, active, device, teacher=teacher, desc=stage,
                                  no_progress=no_progress, stop=stop)
        except StepStop as s:
            raise preempted(stage, [t for t in active if t.failed is None], s) from None
        for trainee in active:
            if trainee.failed is None:
                trainee.end_epoch(epoch, seconds)
        signum = stop.requested() if stop is not None and epoch < last else None
        if signum:
            log.info("received %s: stopping at the end of epoch %d", signal.Signals(signum).name, epoch)
            raise Preempted(f"stopped by {signal.Signals(signum).name} at the end of epoch {epoch}; "
                            f"{kept_checkpoints(trainees)}", signum)


def preempted(stage, trainees, stop):
    """Preempted for a StepStop: the main stage's trainees write their step checkpoints first; an init stage keeps
    none (it starts over)."""
    where = f"in epoch {stop.epoch} after step {stop.next_step}"
    name = signal.Signals(stop.signum).name
    log.info("received %s: stopping %s%s", name, where, "" if stage == "main" else " of the init stage")
    if stage != "main":
        return Preempted(f"stopped by {name} {where} of the init stage, which keeps no checkpoint: --resume starts "
                         "it over", stop.signum)
    for trainee in trainees:
        trainee.save_step(stop.epoch, stop.next_step, stop.seconds)
    return Preempted(f"stopped by {name} {where}; {kept_checkpoints(trainees)}", stop.signum)


def kept_checkpoints(trainees):
    """What each trainee of a stopped fit leaves to resume from (labelled in a group)."""
    return "; ".join(f"{t.label}: {t.kept()}" if t.label else t.kept() for t in trainees)


class MemoryRecord:
    """What a trainee records, kept in memory (runs without a folder: tests, benchmarks): `epochs` holds every
    (kind, epoch, scalars) logged, `last_results` the results a run folder would write; checkpoints are not kept."""

    def __init__(self):
        self.epochs, self.last_results = [], None

    def log(self, epoch, scalars, kind="epoch"):
        self.epochs.append((kind, epoch, dict(scalars)))

    def save_last(self, ckpt):
        """A run folder writes <arch>_last.pth here."""

    def copy_last(self, epoch, is_best):
        """A run folder copies <arch>_last.pth to _best and ckpt_epoch_N here."""

    def save_init(self, ckpt):
        """A run folder writes <arch>_init.pth here."""

    def save_step(self, ckpt):
        """A run folder writes <arch>_step.pth here."""

    def resumed(self, ckpt):
        """A run folder repairs its files after a kill here."""

    def results(self, results):
        self.last_results = dict(results)

    def close(self):
        """Nothing to flush."""
