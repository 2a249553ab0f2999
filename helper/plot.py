"""`python -m helper.plot`: kept where RepDistiller-style scripts and older commands call it; the command is
helper/tools/plot.py."""
from helper.tools.plot import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
