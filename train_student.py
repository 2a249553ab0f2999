"""Distil a student from a frozen teacher (RepDistiller's train_student.py: same flags, folders and losses).

loss = gamma * CE(student, labels) + alpha * KL_T(student || teacher) + beta * (the method's terms)

Several students in one process (one teacher pass per batch): `--distill kd,crd,dkd`, `--model_s a,b`, or
`--plan FILE` (one line of flags per student). Multi-GPU: `torchrun --nproc_per_node=N train_student.py ...` (DDP;
--batch_size is per process, see README). The flags are in helper/options.py; a student run is
helper/session/student.py, and helper/session the lifecycle every run shares.
"""
import sys

from helper import session
from helper.engine import distributed
from helper.naming import student_folders
from helper.options import (
    explicit_dests,
    finish_student_options,
    help_methods,
    one_line_errors,
    replayed_argv,
    run_cli,
    student_parser,
)
from helper.session.student import student_plan
from helper.student.plan import plan_runs


def build_parser(argv=None):
    """Every flag of a student run: the shared training flags, distillation, plug-ins, speed, each method's own
    (with -h in argv, only the flags of the methods of its --distill)."""
    return student_parser(help_methods(argv))


def parse_option(argv=None):
    """The options of one student (the first of a group), checked; the recipe is applied when the teacher is known."""
    parser = build_parser()
    return finish_student_options(parser.parse_args(argv))


def main(argv=None):
    """Train the student(s) of the command line; returns the RunState (a list for a group), None for --dry_run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    argv = replayed_argv(parser, argv)
    line_parser = one_line_errors(build_parser())  # a plan line's mistake: one line naming the line
    runs = plan_runs(argv, lambda args: finish_student_options(parser.parse_args(args)),
                     lambda args: explicit_dests(parser, args),
                     lambda args: finish_student_options(line_parser.parse_args(args)))
    states = session.run(lambda: student_plan(runs))
    if states is not None and distributed.is_main_process():
        analyze_finished(runs)
    return states


def analyze_finished(runs):
    """--analyze: helper.analyze on the run folder of each student that asked for it, once training has ended."""
    asked = [run.opt for run in runs if run.opt.analyze]
    if asked:
        from helper.tools import analyze  # matplotlib and scikit-learn only when asked for
        for opt in asked:
            folder = student_folders(opt, opt.model_t)[0]
            analyze.main([folder, "--device", str(opt.device), "--num_workers", str(opt.num_workers),
                          "--test_subset", str(opt.test_subset)])


if __name__ == "__main__":
    run_cli(main)
