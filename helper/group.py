"""Several students in one process, sharing one teacher pass and one data stream.

`python train_student.py --path_t T --model_s resnet8x4 --distill kd,crd,dkd` trains one student per method (and per
architecture when --model_s lists several: the product of the two lists); `--plan FILE` takes one line per student
holding the flags of a single run, appended to the command line's. Every student keeps what its single run has (its
own optimizer, schedule, epochs, method state, plug-ins, checkpoints, logs, folder) and ends bit-identical to that
single run: the batch is augmented once, the teacher runs once per distinct need, and each student draws its own
randomness from its own streams. A single run is a group of one.
"""
import logging
import os
import shlex
from dataclasses import dataclass

from helper import distributed, fast
from helper.assembly import (build_shared, build_student, claim_folder, describe_data, open_student, read_resume,
                             student_run_name, teacher_accuracy)
from helper.errors import NonFiniteLossError, UserError
from helper.logger import RunLog, detach_run_log
from helper.recipes import apply_recipe
from helper.run import fit
from helper.run_folder import StartupLines

log = logging.getLogger("kd")

# What the students of one process must agree on: the data stream, the teacher, the speed options of the shared
# teacher forward, and how the process runs.
SHARED_FLAGS = ("path_t", "dataset", "data_root", "subset", "test_subset", "batch_size", "seed", "device", "loader",
                "gpu_loader", "num_workers", "amp", "channels_last", "compile", "cuda_graphs", "resume", "dry_run",
                "print_freq", "no_progress", "plot", "cpu_malloc")


@dataclass
class PlannedRun:
    """One student of a group: its options, the flags it was given explicitly, and where it came from."""
    opt: object
    explicit: frozenset
    source: str  # for messages: "--distill kd --model_s resnet8" or "line 3 of plan.txt"
    label: str = ""


def read_plan(path):
    """[(line number, tokens)] of a plan file: one student per non-empty line; '#' starts a comment."""
    if not os.path.isfile(path):
        raise UserError(f"--plan {path} does not exist; give a file with one line of flags per student")
    lines = []
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().splitlines()  # \n, \r\n or \r, as text mode reads them
    except OSError as e:
        raise UserError(f"--plan {path} cannot be read ({e.strerror}); give a readable file") from None
    for number, raw in enumerate(raw_lines, 1):
        text = plan_line_text(path, number, raw).split("#", 1)[0].strip().rstrip("\\").strip()
        if text.startswith("python train_student.py"):
            text = text[len("python train_student.py"):]
        try:
            tokens = shlex.split(text)
        except ValueError as e:
            raise UserError(f"--plan {path} line {number}: {e}") from None
        if tokens:
            lines.append((number, [t for t in tokens if t != '"$@"' and t != "$@"]))
    if not lines:
        raise UserError(f"--plan {path} holds no line of flags")
    return lines


def plan_line_text(path, number, raw):
    """Line `number` (bytes) of a plan file as text; one line naming it when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--plan {path} line {number} is not UTF-8 text; a plan is a text file with one line of "
                        "flags per student") from None


def plan_runs(argv, parse, explicit_dests):
    """The students of a command line: [PlannedRun]. parse(argv) -> options; explicit_dests(argv) -> set."""
    argv = list(argv or [])
    base = parse(argv)
    variants = []
    if base.plan:
        for number, tokens in read_plan(base.plan):
            if "plan" in explicit_dests(tokens):
                raise UserError(f"--plan {base.plan} line {number} holds --plan, which a plan line cannot use; copy "
                                "that file's lines into this one")
            variants.append((f"line {number} of {base.plan}", argv + tokens))
    else:
        methods = [m.strip() for m in base.distill.split(",") if m.strip()]
        students = [m.strip() for m in base.model_s.split(",") if m.strip()]
        if len(methods) * len(students) == 1:
            variants.append(("the command line", argv))
        else:
            for model_s in students:
                for method in methods:
                    variants.append((f"--distill {method} --model_s {model_s}",
                                     argv + ["--distill", method, "--model_s", model_s]))
    runs = [PlannedRun(parse(args), frozenset(explicit_dests(args)), source) for source, args in variants]
    if len(runs) > 1:
        label_runs(runs)
    check_shared(runs)
    return runs


def label_runs(runs):
    """Short unique labels for log lines: method>student, numbered when two would read the same."""
    labels = [f"{r.opt.distill}>{r.opt.model_s}" for r in runs]
    for i, run in enumerate(runs):
        run.label = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]}#{i + 1}"


def check_shared(runs):
    """One line naming the two students and the flag when they disagree on what a process shares."""
    first = runs[0]
    for run in runs[1:]:
        for flag in SHARED_FLAGS:
            a, b = getattr(first.opt, flag, None), getattr(run.opt, flag, None)
            if a != b:
                raise UserError(f"{first.source} and {run.source} differ in --{flag} ({a} vs {b}); the students of "
                                "one process share it: run them in separate processes")


def check_distinct_folders(runs, teacher_arch):
    seen = {}
    for run in runs:
        name = student_run_name(run.opt, teacher_arch)
        if name in seen:
            raise UserError(f"{seen[name].source} and {run.source} would write to the same run folder {name}; give "
                            "one of them another --trial")
        seen[name] = run


def run_students(runs):
    """Train the planned students in one process; returns their RunStates (one RunState for a single run), or None
    for --dry_run. A student whose loss turns non-finite stops alone; the process then ends with exit code 1."""
    startup = StartupLines().start()  # the description lines, copied into each train.log
    try:
        return _run_students(runs, startup)
    finally:
        startup.stop()


def _run_students(runs, startup):
    """run_students' body; `startup` keeps the log lines written before the run folders exist."""
    shared_opt = runs[0].opt
    distributed.setup(shared_opt)
    for run in runs[1:]:
        for name in ("distributed", "rank", "world_size", "device", "no_progress"):
            setattr(run.opt, name, getattr(shared_opt, name))
    shared = build_shared(shared_opt, [r.opt.distill for r in runs])
    describe_data(shared_opt, shared.data)
    for run in runs:
        apply_recipe(run.opt, shared.teacher_arch, run.explicit, log_prefix=f"[{run.label}] " if run.label else "")
    check_distinct_folders(runs, shared.teacher_arch)
    students = [build_student(run.opt, shared, run.label) for run in runs]
    for s in students:
        describe_student(s)
    fast.prepare_models(shared_opt, None, shared.teacher)
    log.info(fast.describe(shared_opt))
    if shared_opt.dry_run:
        log.info("dry run: %s -> %s built; no step run", shared.teacher_arch,
                 ", ".join(f"{s.opt.model_s} ({s.opt.distill})" for s in students))
        return None
    teacher_accuracy(shared, shared_opt)
    try:
        distributed.together(lambda: [claim_folder(s) for s in students])
        for s in students:
            s.resume_ckpt = read_resume(s, shared, allow_fresh=len(students) > 1)
        for s in students:
            open_student(s, shared, shared.data.val_loader, startup)
        startup.stop()
        train(students, shared, shared_opt)
    finally:
        for s in students:
            if s.run_folder is not None:
                s.run_folder.release()
            if s.log_handler is not None:
                detach_run_log(s.log_handler)
    if shared_opt.plot and distributed.is_main_process():
        from helper.plot import plot_each_run  # matplotlib only when asked for
        plot_each_run([s.folder for s in students], log)
    failed = [s for s in students if s.trainee.failed]
    if failed:
        if len(students) == 1:
            error = NonFiniteLossError(failed[0].trainee.failed)
            error.logged = True  # its one line is already on the terminal and in train.log
            raise error
        raise NonFiniteLossError(f"{len(failed)} of {len(students)} students stopped: "
                                 + "; ".join(s.label for s in failed) + " (see their results.json)")
    states = [s.trainee.state for s in students]
    for s in students:
        s.trainee.log.info("best accuracy %.2f (epoch %d); run folder %s", s.trainee.state.best_acc,
                           s.trainee.state.best_epoch, s.folder)
    return states[0] if len(states) == 1 else states


def train(students, shared, opt):
    """The init stages (students that have one and start fresh), then the main stage, over one data stream."""
    data = shared.data
    common = dict(device=opt.device, seed=opt.seed, teacher=shared.teacher, sampler=data.train_sampler,
                  no_progress=opt.no_progress)
    inits = [s for s in students if s.init_trainee is not None]
    if inits:
        fit([s.init_trainee for s in inits], data.train_loader, stage="init", **common)
        for s in inits:
            if s.init_trainee.failed:
                s.trainee.fail(s.init_trainee.failed)
    fit([s.trainee for s in students], data.train_loader, stage="main", **common)


def describe_student(s):
    """The method, its weights and plug-ins, in the log."""
    opt = s.opt
    plugins = ", ".join(p.switch for p in s.plugins) or "none"
    RunLog(s.label).info("%s -> %s: --distill %s, -r %g -a %g -b %g, %d epochs, lr %g (%s), plug-ins: %s",
                         opt.model_t, opt.model_s, opt.distill, opt.gamma, opt.alpha, opt.beta, opt.epochs,
                         opt.learning_rate, opt.lr_schedule, plugins)
