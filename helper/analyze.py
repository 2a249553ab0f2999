"""`python -m helper.analyze`: the command is helper/tools/analyze.py (fidelity, calibration, class-mean logit
difference, CKA and t-SNE of students against their teachers)."""
from helper.tools.analyze import main

if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
