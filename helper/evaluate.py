"""`python -m helper.evaluate`: kept where RepDistiller-style scripts and older commands call it; the command is
helper/tools/evaluate.py."""
from helper.tools.evaluate import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
