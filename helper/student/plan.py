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

from distiller_zoo import get_distiller_class
from helper.errors import UserError

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
    tokens: tuple = ()  # the flags this student adds to the command line's (its plan line, --distill/--model_s)


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


def plan_runs(argv, parse, explicit_dests, parse_line=None):
    """The students of a command line: [PlannedRun]. parse(argv) -> options; explicit_dests(argv) -> set;
    parse_line(argv): parse for a plan line's arguments, raising UserError rather than printing the usage (its
    message then names the line)."""
    argv = list(argv or [])
    base = parse(argv)
    variants = []
    if base.plan:
        for number, tokens in read_plan(base.plan):
            if "plan" in explicit_dests(tokens):
                raise UserError(f"--plan {base.plan} line {number} holds --plan, which a plan line cannot use; copy "
                                "that file's lines into this one")
            variants.append((f"line {number} of {base.plan}", tokens))
    else:
        methods = [m.strip() for m in base.distill.split(",") if m.strip()]
        students = [m.strip() for m in base.model_s.split(",") if m.strip()]
        if len(methods) * len(students) == 1:
            variants.append(("the command line", []))
        else:
            for model_s in students:
                for method in methods:
                    variants.append((f"--distill {method} --model_s {model_s}", ["--distill", method, "--model_s", model_s]))
    runs = [PlannedRun(parse_variant(parse_line or parse, argv + tokens, source), frozenset(explicit_dests(argv + tokens)), source,
                       tokens=tuple(tokens)) for source, tokens in variants]
    if len(runs) > 1:
        label_runs(runs)
    check_shared(runs)
    check_beta_has_terms(runs)
    return runs


def check_beta_has_terms(runs):
    """-b for a method with no term of its own (KD), given for that student alone (a single run, or on its plan
    line), weights nothing: one line. A -b shared by the students of `--distill kd,crd` is for the others."""
    for run in runs:
        own = len(runs) == 1 or any(t in ("-b", "--beta") or t.startswith("--beta=") for t in run.tokens)
        if own and run.opt.beta and not get_distiller_class(run.opt.distill).has_terms:
            where = "" if len(runs) == 1 else f"{run.source}: "
            raise UserError(f"{where}--distill {run.opt.distill} has no loss term of its own: -b {run.opt.beta:g} "
                            "would weight nothing; drop -b (its distillation weight is -a)")


def parse_variant(parse, args, source):
    """parse(args); a plan line's mistake names the line."""
    try:
        return parse(args)
    except UserError as e:
        if not source.startswith("line "):
            raise
        raise UserError(f"{source}: {e}") from None


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
