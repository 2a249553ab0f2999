"""One lifecycle for every run: a session takes a `Plan` (the run specs of one process and the data stream they
share) and takes each run through claim, resume, logs, fit (init stage, then main), results, plot and exit status.

A run spec is a teacher run (helper.session.teacher) or a student run (helper.session.student); both implement:
- `label`, `opt`, `arch`, `folder`, `tb_folder`, `script` (which script's checkpoints it writes);
- `resume(allow_fresh)`: the validated checkpoint to continue from, restored into the run, or None;
- `protocol()`: what results.json records as the run's protocol;
- `trainees(record, resumed)`: the main Trainee and the init stage's (or None), recording into `record`.
"""
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from helper.engine import distributed, fast
from helper.engine.preemption import stop_on_signals
from helper.engine.trainee import Trainee, fit
from helper.errors import NonFiniteLossError
from helper.runs.folder import RunFolder, StartupLines
from helper.runs.logger import attach_run_log, detach_run_log
from helper.runs.record import RunRecord, purge_step, start_writing

log = logging.getLogger("kd")


@dataclass(frozen=True)
class Stream:
    """The data stream the runs of one process share, and how the process runs."""
    loader: object
    sampler: object
    device: torch.device
    seed: int
    no_progress: Optional[bool] = None
    teacher: Optional[torch.nn.Module] = None  # a student group's frozen teacher, run once per batch
    plot: bool = False


@dataclass(frozen=True)
class Plan:
    specs: list
    stream: Stream


@dataclass
class OpenRun:
    """A run once its folder is claimed: the spec, its lock, its train.log handler, its trainees."""
    spec: object
    folder: Optional[RunFolder] = None
    log_handler: Optional[logging.Handler] = None
    trainee: Optional[Trainee] = None
    init: Optional[Trainee] = None
    ckpt: Optional[dict] = field(default=None, repr=False)


def run(make_plan):
    """Run the Plan `make_plan()` returns (None: nothing to train, e.g. --dry_run). Returns the RunState of a single
    run, the list of them for several; a run whose loss turns non-finite stops alone, and the session then raises
    NonFiniteLossError (exit code 1)."""
    startup = StartupLines().start()  # the description lines, copied into each train.log
    try:
        plan = make_plan()
        if plan is None:
            return None
        return train_plan(plan, startup)
    finally:
        startup.stop()


def train_plan(plan, startup):
    runs = [OpenRun(spec) for spec in plan.specs]
    with claimed(runs):
        for r in runs:  # every check before the first write
            r.ckpt = r.spec.resume(allow_fresh=len(runs) > 1)
        for r in runs:
            open_run(r, startup)
        startup.stop()
        with stop_on_signals(plan.stream.device) as stop:
            fit_all(runs, plan.stream, stop)
    if plan.stream.plot and distributed.is_main_process():
        from helper.runs.curves import plot_each_run  # matplotlib only when asked for
        plot_each_run([r.spec.folder for r in runs], log)
    return outcome(runs)


@contextlib.contextmanager
def claimed(runs):
    """Lock every run folder (main process) and check what an earlier run left there; release the locks and the
    train.log handlers at the end, whatever happens."""
    try:
        distributed.together(lambda: [claim(r) for r in runs])
        yield runs
    finally:
        for r in runs:
            if r.folder is not None:
                r.folder.release(started=r.trainee is not None)
            if r.log_handler is not None:
                detach_run_log(r.log_handler)


def claim(r):
    if distributed.is_main_process():
        opt = r.spec.opt
        r.folder = RunFolder(r.spec.folder).claim(r.spec.tb_folder, bool(opt.resume), opt.overwrite)


def open_run(r, startup):
    """Once every run is checked: clean its folder, write its options, start its logs (train.log begins with the
    process's `startup` lines) and build its trainees, recording into the folder."""
    spec, opt = r.spec, r.spec.opt
    main_process = distributed.is_main_process()
    if main_process:
        start_writing(r.folder, opt, r.ckpt)
        r.log_handler = attach_run_log(spec.folder, spec.label)
        startup.copy_to(r.log_handler)
    record = RunRecord(spec.folder, spec.tb_folder, arch=spec.arch, script=spec.script, save_freq=opt.save_freq,
                       protocol=spec.protocol(), enabled=main_process, purge_step=purge_step(opt, r.ckpt))
    r.trainee, r.init = spec.trainees(record, resumed=r.ckpt is not None)
    if r.ckpt is not None:
        r.trainee.resume_from(r.ckpt)


def fit_all(runs, stream, stop=None):
    """The init stages (runs that have one and start fresh), then the main stage, over one data stream; a stop
    signal ends both with step checkpoints (helper.engine.preemption)."""
    common = dict(device=stream.device, seed=stream.seed, teacher=stream.teacher, sampler=stream.sampler,
                  no_progress=stream.no_progress, stop=stop)
    inits = [r for r in runs if r.init is not None]
    if inits:
        fit([r.init for r in inits], stream.loader, stage="init", **common)
        for r in inits:
            if r.init.failed:
                r.trainee.fail(r.init.failed)
    fit([r.trainee for r in runs], stream.loader, stage="main", **common)


def outcome(runs):
    """The RunState(s), or NonFiniteLossError when a run stopped (its one line is already logged)."""
    failed = [r for r in runs if r.trainee.failed]
    if failed:
        if len(runs) == 1:
            raise NonFiniteLossError(failed[0].trainee.failed, logged=True)
        raise NonFiniteLossError(f"{len(failed)} of {len(runs)} students stopped: "
                                 + "; ".join(r.spec.label for r in failed) + " (see their results.json)")
    for r in runs:
        state = r.trainee.state
        r.trainee.log.info("best accuracy %.2f (epoch %d); run folder %s", state.best_acc, state.best_epoch,
                           r.spec.folder)
    states = [r.trainee.state for r in runs]
    return states[0] if len(states) == 1 else states


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
