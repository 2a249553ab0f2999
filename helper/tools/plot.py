"""`python -m helper.plot RUN... [--out FILE]`: the training curves of run folders as one PNG (drawn by
helper.runs.curves, which a run's --plot uses too)."""
import argparse
import os

from helper.runs.curves import plot_runs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot the training curves of run folders into one PNG.")
    parser.add_argument("runs", nargs="+", help="run folders (each with a log.jsonl)")
    parser.add_argument("--out", default=None, help="PNG to write (default: RUN/curves.png for one run, "
                                                    "curves.png here for several)")
    args = parser.parse_args(argv)
    out = args.out or (os.path.join(args.runs[0], "curves.png") if len(args.runs) == 1 else "curves.png")
    print(plot_runs(args.runs, out))
    return out


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
