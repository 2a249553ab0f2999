"""Train a network from scratch with cross-entropy (RepDistiller's train_teacher.py, same flags and defaults).

Multi-GPU: `torchrun --nproc_per_node=N train_teacher.py ...` (DDP; --batch_size is per process, see README).
The flags are in helper/options.py; a teacher run is helper/session/teacher.py, and helper/session the lifecycle
every run shares.
"""
from helper import session
from helper.options import parse_teacher_options, run_cli
from helper.session.teacher import teacher_plan


def parse_option(argv=None):
    """The options of a teacher run, checked (with the flags of --from_run RUN_FOLDER in front)."""
    return parse_teacher_options(argv)


def main(argv=None):
    """Train the teacher of the command line; returns its RunState."""
    return session.run(lambda: teacher_plan(parse_option(argv)))


if __name__ == "__main__":
    run_cli(main)
