"""`python -m helper.verify_teacher`: kept where RepDistiller-style scripts and older commands call it; the command is
helper/tools/verify_teacher.py."""
from helper.tools.verify_teacher import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
