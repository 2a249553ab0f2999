"""`python -m helper.launch`: a table of runs as SLURM / local / debug jobs; the command is helper/tools/launch.py."""
from helper.tools.launch import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
