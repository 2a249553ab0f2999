"""Our train_student.py against RepDistiller's own train_student.py: training-epoch time, same flags, same data.

Both scripts run as the user runs them, in subprocesses, in one temporary working directory holding a generated
CIFAR-100-format folder (./data/cifar-100-python: tests/cifar_fixture.make_fake_cifar100, rewritten in the real
files' Python 2 pickle form, which both torchvision and our loader read) and one random resnet32x4 teacher in
RepDistiller's format ({'model': state_dict} at save/models/resnet32x4_vanilla/ckpt_epoch_240.pth, the folder name
giving RepDistiller the teacher's architecture). The flags are RepDistiller's KD line for resnet32x4 ->
resnet8x4 on both sides:

  --path_t save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --model_s resnet8x4 --distill kd -r 0.1 -a 0.9 -b 0
  --batch_size 64 --num_workers W --epochs E

plus, on our side, --loader auto (the default: the dataset resident on the device, augmented there) or
--loader torch (torch's DataLoader with W workers, as RepDistiller's), and --cpu_malloc tuned (the default) or
system (glibc's allocator defaults: shows what the tuning contributes), --device cpu, --no_progress and a run folder
of its own. The runs alternate (RepDistiller, ours default, ours --loader torch, ours --cpu_malloc system)
--repeats times, each process with OMP_NUM_THREADS=--threads. Timed: each training epoch as the script itself
times it (RepDistiller prints "epoch N, total time S" around its train loop; ours writes epoch_time, the same
span, to log.jsonl), so start-up, teacher validation, test passes and checkpoints are left out; "process s" is the
whole process's wall time.

RepDistiller's code is never copied here. The user makes a checkout from a clone or mirror:

  mkdir -p DIR && git --git-dir=<RepDistiller's .git or mirror> archive HEAD | tar -x -C DIR
  git --git-dir=<same> rev-parse HEAD > DIR/COMMIT        # optional: the commit recorded in RESULTS.md

and its unmodified train_student.py runs through `launch_repdistiller` below, which only registers a stand-in
`tensorboard_logger` module (the package no longer imports on current Python) with a no-op Logger, and makes
torchvision's CIFAR100 accept the generated folder (its md5 check becomes a file-exists check), then runs the script
with runpy.

  .venv/bin/python benchmarks/bench_vs_repdistiller.py --repdistiller DIR --write
"""
import argparse
import glob
import hashlib
import json
import os
import pickle
import re
import runpy
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import types

from results_md import cpu_name, load_average, replace_section, section_head  # this script's folder

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
LAUNCH = "--launch_repdistiller"
TEACHER = os.path.join("save", "models", "resnet32x4_vanilla", "ckpt_epoch_240.pth")
RUNS = ("repdistiller", "ours (default loader)", "ours (--loader torch)", "ours (--cpu_malloc system)")
REPDISTILLER_EPOCH = re.compile(r"^epoch (\d+), total time ([0-9.]+)", re.M)


# ---------------------------------------------------------------------------------------------------------------
# The launcher: RepDistiller's train_student.py, unmodified, in this process. Nothing of ours is imported here, so
# RepDistiller's packages (models, dataset, helper, crd, distiller_zoo) resolve to its checkout.

class _StandInLogger:
    """tensorboard_logger.Logger without TensorBoard: every value is dropped."""

    def __init__(self, logdir=None, flush_secs=None, **kwargs):
        self.logdir = logdir

    def log_value(self, name, value, step=None):
        pass


def launch_repdistiller(checkout, argv):
    """Run `checkout`/train_student.py with `argv` as if from the command line (cwd: the benchmark's folder)."""
    script = os.path.join(checkout, "train_student.py")
    sys.path[:] = [checkout] + [p for p in sys.path if os.path.abspath(p or ".") not in (HERE, ROOT)]
    stand_in = types.ModuleType("tensorboard_logger")
    stand_in.Logger = _StandInLogger
    sys.modules["tensorboard_logger"] = stand_in
    import torchvision.datasets.cifar as tv_cifar
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)  # generated files have other md5s
    sys.argv = [script] + list(argv)
    runpy.run_path(script, run_name="__main__")


# ---------------------------------------------------------------------------------------------------------------
# Options.

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repdistiller", required=True, help="folder holding a checkout of RepDistiller (see above)")
    p.add_argument("--repdistiller_commit", default=None,
                   help="the checkout's commit, for the record (default: DIR/COMMIT, or git rev-parse in DIR)")
    p.add_argument("--per_class", type=int, default=30,
                   help="generated training images per class (30: 3000 images, 47 steps of 64)")
    p.add_argument("--test_per_class", type=int, default=2, help="generated test images per class (2)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per run (1)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the four runs (3)")
    p.add_argument("--batch_size", type=int, default=64, help="--batch_size of both scripts (64)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1,
                   help="--num_workers of both scripts (the CPU count)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every run (1: on a CPU shared with other jobs, more threads wait at "
                        "OpenMP barriers for descheduled siblings)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working directory (its path is printed)")
    p.add_argument("--write", action="store_true", help=f"write the CPU section of {os.path.relpath(RESULTS)}")
    args = p.parse_args(argv)
    script = os.path.join(args.repdistiller, "train_student.py")
    if not os.path.isfile(script):
        p.error(f"--repdistiller {args.repdistiller}: no train_student.py there; make a checkout as the help says")
    for name in ("per_class", "test_per_class", "epochs", "repeats", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    if args.num_workers < 0:
        p.error("--num_workers must be >= 0")
    args.repdistiller = os.path.abspath(args.repdistiller)
    return args


def repdistiller_commit(args):
    """The checkout's commit: --repdistiller_commit, DIR/COMMIT, or git rev-parse in DIR; else 'unknown'."""
    if args.repdistiller_commit:
        return args.repdistiller_commit
    recorded = os.path.join(args.repdistiller, "COMMIT")
    if os.path.isfile(recorded):
        return open(recorded).read().strip()
    done = subprocess.run(["git", "-C", args.repdistiller, "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


# ---------------------------------------------------------------------------------------------------------------
# The working directory: data and teacher shared by every run.

class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 strings, as the real CIFAR-100 files hold them: they load as bytes with
    encoding='bytes' (our loader) and as str with encoding='latin1' (torchvision's CIFAR100)."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, obj):
        n = len(obj)
        opcode = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(opcode + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_string


def as_python2_pickles(folder):
    """Rewrite the generated train/test/meta files (Python 3 bytes) in the real files' Python 2 form."""
    for name in ("train", "test", "meta"):
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
        with open(path, "wb") as f:
            _Python2Pickler(f, protocol=2).dump(content)


def prepare_workdir(args, workdir):
    """./data/cifar-100-python (generated) and the random teacher in RepDistiller's format and folder."""
    sys.path.insert(0, ROOT)
    import torch
    from models import build_model
    from tests.cifar_fixture import make_fake_cifar100
    data_root = make_fake_cifar100(os.path.join(workdir, "data"), n_train_per_class=args.per_class,
                                   n_test_per_class=args.test_per_class)
    as_python2_pickles(os.path.join(data_root, "cifar-100-python"))
    torch.manual_seed(0)
    teacher = build_model("resnet32x4", 100)
    os.makedirs(os.path.join(workdir, os.path.dirname(TEACHER)))
    torch.save({"model": teacher.state_dict()}, os.path.join(workdir, TEACHER))


def common_flags(args):
    return ["--path_t", TEACHER, "--model_s", "resnet8x4", "--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0",
            "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers), "--epochs", str(args.epochs)]


def command_of(args, run, run_folder):
    """The subprocess command of one run."""
    if run == "repdistiller":
        return [sys.executable, os.path.abspath(__file__), LAUNCH, args.repdistiller, "--"] + common_flags(args)
    loader = "torch" if "torch" in run else "auto"
    malloc = "system" if "system" in run else "tuned"
    return [sys.executable, os.path.join(ROOT, "train_student.py")] + common_flags(args) + [
        "--loader", loader, "--cpu_malloc", malloc, "--device", "cpu", "--no_progress", "--model_path", run_folder,
        "--tb_path", os.path.join(run_folder, "tb")]


def epoch_times(run, stdout, run_folder):
    """The training epochs' seconds as the script timed them."""
    if run == "repdistiller":
        return [float(seconds) for _, seconds in REPDISTILLER_EPOCH.findall(stdout)]
    logs = glob.glob(os.path.join(run_folder, "*", "log.jsonl"))
    if len(logs) != 1:
        raise RuntimeError(f"expected one log.jsonl under {run_folder}, found {len(logs)}")
    with open(logs[0]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r["epoch_time"] for r in records if r.get("kind", "epoch") == "epoch"]


def run_once(args, run, workdir, number):
    """One process: {run, epochs: [s], process: s}."""
    run_folder = os.path.join(workdir, "ours_runs", str(number))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    done = subprocess.run(command_of(args, run, run_folder), cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{run} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    epochs = epoch_times(run, done.stdout + done.stderr, run_folder)
    if len(epochs) != args.epochs:
        raise RuntimeError(f"{run}: found {len(epochs)} epoch times, expected {args.epochs}:\n{done.stdout[-2000:]}")
    return dict(run=run, epochs=epochs, process=seconds)


# ---------------------------------------------------------------------------------------------------------------
# Report.

def summary(results):
    """Per run: median epoch seconds (over repeats of each run's mean epoch), min-max, process median, ratio."""
    rows = {}
    for run in RUNS:
        mine = [r for r in results if r["run"] == run]
        per_run = [statistics.fmean(r["epochs"]) for r in mine]
        rows[run] = dict(epoch=statistics.median(per_run), low=min(per_run), high=max(per_run),
                         process=statistics.median(r["process"] for r in mine), n=len(mine))
    base = rows["repdistiller"]["epoch"]
    for row in rows.values():
        row["ratio"] = row["epoch"] / base
    return rows


def table(rows, steps):
    out = ["| run | epoch s (median) | min-max s | ms/step | process s (median) | ours / RepDistiller |",
           "|---|---:|---:|---:|---:|---:|"]
    for run, r in rows.items():
        ratio = "-" if run == "repdistiller" else f"{r['ratio']:.2f}x"
        out.append(f"| {run} | {r['epoch']:.1f} | {r['low']:.1f}-{r['high']:.1f} | {r['epoch'] / steps * 1e3:.0f} | "
                   f"{r['process']:.1f} | {ratio} |")
    return out


def verdict(rows):
    """Whether the default run is not slower than RepDistiller's (medians), beside the spread of RepDistiller's own
    repeats, which says how much of a difference the machine's noise alone makes."""
    ratio = rows["ours (default loader)"]["ratio"]
    base = rows["repdistiller"]
    spread = (base["high"] - base["low"]) / base["epoch"]
    outcome = "not slower" if ratio <= 1.0 else f"slower by {(ratio - 1) * 100:.1f}%"
    return (f"Default (`--loader auto`, device-resident) vs RepDistiller: {ratio:.3f}x the epoch time (medians): "
            f"{outcome}. RepDistiller's own repeats spread over {spread * 100:.0f}% of its median.")


def machine_lines(args):
    import platform
    import torch
    import torchvision
    return [f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, OMP_NUM_THREADS {args.threads} in every run",
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}"]


def section(args, rows, command, load_start, seconds, commit, script_sha):
    steps = -(-args.per_class * 100 // args.batch_size)
    marker = section_marker(args)
    title = (f"Ours vs RepDistiller's train_student.py (CPU, {args.threads} thread(s), "
             "benchmarks/bench_vs_repdistiller.py)")
    repdistiller = f"RepDistiller: commit {commit}, train_student.py sha256 {script_sha[:16]}... (run as is)"
    lines = section_head(marker, title, command, machine_lines(args) + [repdistiller], load_start)
    lines += [f"Run: KD resnet32x4 (random) -> resnet8x4, -r 0.1 -a 0.9 -b 0, batch {args.batch_size}, "
              f"--num_workers {args.num_workers}, {args.epochs} epoch(s) of {args.per_class * 100} generated "
              f"CIFAR-100-format images ({steps} steps), {args.test_per_class * 100} test images; the {len(RUNS)} runs "
              f"alternate, {args.repeats} repeats; {seconds:.0f} s in all.  ",
              "GPU figures: not measured (no GPU lent to this task).", ""]
    lines += table(rows, steps) + ["", verdict(rows), "", f"<!-- /{marker} -->"]
    return lines


def section_marker(args):
    """One RESULTS.md section per thread count: bench_vs_repdistiller:cpu-threads<N>."""
    return f"bench_vs_repdistiller:cpu-threads{args.threads}"


def write_section(lines, args, path=RESULTS):
    replace_section(section_marker(args), lines, path)


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/bench_vs_repdistiller.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = repdistiller_commit(args)
    with open(os.path.join(args.repdistiller, "train_student.py"), "rb") as f:
        script_sha = hashlib.sha256(f.read()).hexdigest()
    workdir = tempfile.mkdtemp(prefix="bench_vs_repdistiller_")
    load_start = load_average()
    print(f"bench_vs_repdistiller: RepDistiller {commit} in {args.repdistiller}; work dir {workdir}; "
          f"load average {load_start}", flush=True)
    started = time.perf_counter()
    try:
        prepare_workdir(args, workdir)
        results = []
        for repeat in range(args.repeats):
            for run in RUNS:
                result = run_once(args, run, workdir, len(results))
                results.append(result)
                print(f"  repeat {repeat + 1}/{args.repeats}  {run:<22} epochs "
                      + ", ".join(f"{s:.1f}" for s in result["epochs"]) + f" s; process {result['process']:.1f} s",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - started
    rows = summary(results)
    steps = -(-args.per_class * 100 // args.batch_size)
    print()
    print("\n".join(table(rows, steps) + ["", verdict(rows)]))
    if args.write:
        write_section(section(args, rows, command, load_start, seconds, commit, script_sha), args)
        print(f"\nwrote {os.path.relpath(RESULTS)}")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == [LAUNCH]:
        checkout, rest = sys.argv[2], sys.argv[3:]
        launch_repdistiller(checkout, rest[1:] if rest[:1] == ["--"] else rest)
    else:
        main()
