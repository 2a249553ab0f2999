"""`python -m helper.probe`: the linear-probe transfer command, next to helper.evaluate and helper.table; the command
is helper/tools/probe.py."""
from helper.tools.probe import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
