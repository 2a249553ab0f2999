"""`python -m helper.table`: kept where RepDistiller-style scripts and older commands call it; the command is
helper/tools/table.py."""
from helper.tools.table import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
