"""A group of N students in one process against its N single runs: time of the same K batches.

Every student is built as train_student.py builds it (helper.session.memory.student_options, the recipe of
helper.recipes.apply_recipe, a helper.student.build.Shared over the real dataset.build_loaders on CIFAR-shaped random
uint8 images with a random teacher, helper.session.memory.trainable_student). The loader's first K
batches are kept as a list, and helper.engine.loop.train_epoch runs over that list: once per student alone (N calls, one
trainee each) and once for the group (one call, N trainees: each batch is shared and the teacher runs once per
distinct need). The students are built once and reused, so a single run and the group run the same modules.

The runs are interleaved (teacher forward, single runs, groups; the order reversed every other repeat) --repeats
times after one untimed warm-up step of the largest group; medians and min-max over the repeats are reported, and
the ratio group / sum of its single runs (median of the per-repeat ratios). "teacher share" is the teacher's
forward (as KD needs it) over a KD single step: a group saves N - 1 teacher passes per step, which gives the "ideal"
ratio (sum of singles - (N - 1) teacher forwards) / sum of singles. Besides wall time, each run's CPU time (this
process, all its threads) is reported: on a machine shared with other jobs it moves less than wall time when this
process is descheduled; the verdict uses wall time. Targets (issue 9, on the CPU): a group of 4 at
most 0.6x, a group of 8 at most 0.5x the sum of its single runs.

  .venv/bin/python benchmarks/bench_group.py --device cpu --threads 1 --write    # the recorded CPU run
  .venv/bin/python benchmarks/bench_group.py --quick --device cpu                # CI-sized smoke run
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_kd import install_synthetic_cifar, machine, release_freed_memory  # noqa: E402
from results_md import load_average, replace_section, section_head  # noqa: E402
from dataset import build_loaders  # noqa: E402
from distiller_zoo.base import Batch, Needs, get_distiller_class  # noqa: E402
from helper.engine import fast  # noqa: E402
from helper.session.memory import student_options, trainable_student  # noqa: E402
from helper.student.build import Shared  # noqa: E402
from helper.engine.loop import TeacherOutputs, train_epoch  # noqa: E402
from helper.util import resolve_device, set_seed  # noqa: E402
from models import build_model  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
METHODS = "kd,crd,dkd,attention,similarity,vid,pkt,rkd"
TARGETS = {4: 0.6, 8: 0.5}  # issue 9: group time / sum of single runs, on the CPU


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized: resnet20 -> resnet8, batch 8, 512 images, methods kd,crd, a group of 2, 2 steps, "
                        "1 repeat")
    p.add_argument("--write", action="store_true", help=f"write this device's section of {os.path.relpath(RESULTS)}")
    p.add_argument("--teacher", default=None, help="teacher network, random weights (resnet32x4)")
    p.add_argument("--student", default=None, help="student network of every method (resnet8x4)")
    p.add_argument("--batch", type=int, default=None, help="batch size (64)")
    p.add_argument("--images", type=int, default=None, help="training images, at most 50000 (50000)")
    p.add_argument("--steps", type=int, default=None, help="K: batches each run trains on (3; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="R: interleaved repeats (3; 1 with --quick)")
    p.add_argument("--methods", default=None, help=f"the students, in group order ({METHODS})")
    p.add_argument("--groups", default=None,
                   help="group sizes N, each the first N of --methods (4,8; 2 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a CPU shared with other jobs, more threads wait at OpenMP barriers "
                        "for descheduled siblings)")
    args = p.parse_args(argv)
    args.device = str(resolve_device(args.device))
    quick = args.quick
    defaults = dict(teacher="resnet20" if quick else "resnet32x4", student="resnet8" if quick else "resnet8x4",
                    batch=8 if quick else 64, images=512 if quick else 50000, steps=2 if quick else 3,
                    repeats=1 if quick else 3, methods="kd,crd" if quick else METHODS, groups="2" if quick else "4,8")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 < args.images <= 50000:
        p.error("--images must be in 1..50000")
    if args.steps < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--steps, --repeats and --threads must be positive")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        for method in args.methods:
            get_distiller_class(method)
        args.groups = sorted({int(n) for n in args.groups.split(",") if n.strip()})
    except Exception as error:
        p.error(f"--methods/--groups: {error}")
    if not args.groups or args.groups[0] < 2 or args.groups[-1] > len(args.methods):
        p.error(f"--groups: sizes between 2 and the number of --methods ({len(args.methods)})")
    if args.steps * args.batch > args.images:
        p.error("--steps x --batch must not exceed --images (one epoch's batches are cached)")
    return args


# ---------------------------------------------------------------------------------------------------------------
# The students, built as train_student.py builds them.

def method_options(args, method):
    """train_student's options for `method` on the benchmark's pair, and the flags given (the recipe fills the rest)."""
    return student_options(["--path_t", "unused.pth", "--distill", method, "--model_s", args.student, "--device",
                            args.device, "--batch_size", str(args.batch), "--num_workers", "0", "--no_progress"])


def build_everything(args):
    """(trainees by method, teacher, shared options, the cached batches) over one Shared, as a group run has it."""
    device = torch.device(args.device)
    set_seed(0)
    opts = {m: method_options(args, m) for m in args.methods}
    first = opts[args.methods[0]][0]
    needs = [get_distiller_class(m).needs for m in args.methods]
    data = build_loaders(first, with_index=any(n.index or n.contrast_index for n in needs),
                         strong_view=any(n.strong_view for n in needs))
    teacher = build_model(args.teacher, data.num_classes).to(device).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    shared = Shared(data=data, teacher=teacher, teacher_arch=args.teacher, teacher_sha256="bench")
    trainees = {}
    for method in args.methods:
        opt, explicit = opts[method]
        trainees[method] = trainable_student(opt, shared, explicit, label=method).trainee
    fast.prepare_models(first, None, teacher)
    batches = cached_batches(data.train_loader, args.steps)
    return trainees, teacher, batches


def cached_batches(loader, k):
    """The loader's first k batches, as a list train_epoch iterates like a loader (the same batches for every run)."""
    batches = []
    for items in loader:
        batches.append(items)
        if len(batches) == k:
            return batches
    raise ValueError(f"the loader has fewer than {k} batches")


# ---------------------------------------------------------------------------------------------------------------
# Timing.

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work, device):
    """(wall seconds, CPU seconds of this process) of work()."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def time_run(trainees, teacher, batches, device):
    """(wall, CPU) seconds of train_epoch over `batches` training `trainees` together (one teacher pass per need)."""
    seconds = timed(lambda: train_epoch(1, batches, trainees, device, teacher=teacher, no_progress=True), device)
    failed = [t.failed for t in trainees if t.failed]
    if failed:
        raise RuntimeError(failed[0])
    return seconds


def time_teacher(teacher, batches, device, needs=Needs()):
    """(wall, CPU) seconds of the teacher's forward on `batches`, as a KD student needs it (logits only)."""
    @torch.no_grad()
    def forwards():
        for items in batches:
            TeacherOutputs(teacher, Batch.from_loader(items, device), [needs]).get(needs)
    return timed(forwards, device)


def measure(args, trainees, teacher, batches):
    """({run name: [wall seconds per repeat]}, the same in CPU seconds): the teacher forward, every single run and
    every group, interleaved."""
    device = torch.device(args.device)
    largest = [trainees[m] for m in args.methods[:args.groups[-1]]]
    time_run(largest, teacher, batches[:1], device)  # warm-up: every student and the teacher once
    plan = [("teacher", None)] + [(m, [trainees[m]]) for m in args.methods]
    plan += [(f"group of {n}", [trainees[m] for m in args.methods[:n]]) for n in args.groups]
    times, cpu_times = {name: [] for name, _ in plan}, {name: [] for name, _ in plan}
    for repeat in range(args.repeats):
        for name, group in (plan if repeat % 2 == 0 else plan[::-1]):
            wall, cpu = (time_teacher(teacher, batches, device) if group is None
                         else time_run(group, teacher, batches, device))
            times[name].append(wall)
            cpu_times[name].append(cpu)
            print(f"  repeat {repeat + 1}/{args.repeats}  {name:<14} {wall:7.2f} s (CPU {cpu:.2f} s)", flush=True)
    return times, cpu_times


# ---------------------------------------------------------------------------------------------------------------
# Report.

def group_rows(args, times, cpu_times=None):
    """Per group size: its median, the median sum of its singles, the ratio (median and range of the per-repeat
    ratios; also in CPU time when `cpu_times` is given), the ideal ratio from the teacher passes saved, and the
    target's verdict (on the wall-clock ratio)."""
    rows = []
    for n in args.groups:
        members = args.methods[:n]
        ratios = per_repeat_ratios(args, times, n)
        sums = [sum(times[m][r] for m in members) for r in range(args.repeats)]
        ideal = [(s - (n - 1) * t) / s for s, t in zip(sums, times["teacher"])]
        target = TARGETS.get(n) if args.device == "cpu" and not args.quick else None
        ratio = statistics.median(ratios)
        verdict = "-" if target is None else ("pass" if ratio <= target else "miss")
        rows.append(dict(n=n, members=members, group=statistics.median(times[f"group of {n}"]),
                         singles=statistics.median(sums), ratio=ratio, ratio_min=min(ratios), ratio_max=max(ratios),
                         ideal=statistics.median(ideal), target=target, verdict=verdict))
        if cpu_times is not None:
            rows[-1]["cpu_ratio"] = statistics.median(per_repeat_ratios(args, cpu_times, n))
    return rows


def per_repeat_ratios(args, times, n):
    """Group of n / sum of its members' single runs, one ratio per repeat."""
    members = args.methods[:n]
    return [times[f"group of {n}"][r] / sum(times[m][r] for m in members) for r in range(args.repeats)]


def teacher_share(times):
    """Median teacher forward per step over median KD single step (None without a kd student)."""
    if "kd" not in times:
        return None
    return statistics.median(times["teacher"]) / statistics.median(times["kd"])


def run_label(args, name):
    if name == "teacher":
        return "teacher forward only (KD's need)"
    if name in args.methods:
        return f"single: {name}"
    return f"{name}: {', '.join(args.methods[:int(name.split()[-1])])}"


def run_table(args, times, cpu_times):
    out = [f"| run | wall s for {args.steps} steps (median) | min-max s | ms/step | CPU s (median) |",
           "|---|---:|---:|---:|---:|"]
    for name, values in times.items():
        median = statistics.median(values)
        out.append(f"| {run_label(args, name)} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | "
                   f"{median / args.steps * 1e3:.0f} | {statistics.median(cpu_times[name]):.2f} |")
    return out


def ratio_table(rows):
    out = ["| N | group s (median) | sum of its single runs s (median) | group / sum (median) | min-max | "
           "group / sum in CPU time | ideal (teacher passes saved) | target | result |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        target = f"<= {r['target']:.1f}x" if r["target"] is not None else "-"
        out.append(f"| {r['n']} | {r['group']:.2f} | {r['singles']:.2f} | {r['ratio']:.2f}x | {r['ratio_min']:.2f}-"
                   f"{r['ratio_max']:.2f} | {r['cpu_ratio']:.2f}x | {r['ideal']:.2f}x | {target} | {r['verdict']} |")
    return out


def report(args, times, cpu_times):
    share = teacher_share(times)
    lines = run_table(args, times, cpu_times) + [""] + ratio_table(group_rows(args, times, cpu_times))
    if share is not None:
        lines += ["", f"Teacher share of a KD step: {share:.0%} wall, {teacher_share(cpu_times):.0%} CPU time "
                      f"(teacher forward {statistics.median(times['teacher']) / args.steps * 1e3:.0f} ms / KD single "
                      f"step {statistics.median(times['kd']) / args.steps * 1e3:.0f} ms, medians)."]
    return lines


def section(args, times, cpu_times, command, seconds, load_start):
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    device = torch.device(args.device)
    lines = section_head(f"bench_group:{kind}", f"Group of students vs single runs ({kind.upper()}, "
                         "benchmarks/bench_group.py)", command, machine(device), load_start)
    lines += [f"Run: teacher {args.teacher} (random weights) -> student {args.student} for every method, batch "
              f"{args.batch}, the loader's first {args.steps} batches of {args.images} random CIFAR-shaped images "
              f"(device-resident loader), {args.repeats} interleaved repeats after one warm-up step; "
              f"{seconds:.0f} s in all.  "]
    if kind == "cpu":
        lines.append("GPU figures: not measured (no GPU lent to this task).  ")
    lines += [""] + report(args, times, cpu_times) + ["", f"<!-- /bench_group:{kind} -->"]
    return lines


def write_section(text_lines, kind, path=RESULTS):
    """Replace this device kind's bench_group section of RESULTS.md (or append it)."""
    replace_section(f"bench_group:{kind}", text_lines, path)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    release_freed_memory()
    install_synthetic_cifar(args.images)
    command = "python benchmarks/bench_group.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = load_average()
    print(f"bench_group on {device}: " + "; ".join(machine(device)) + f"; load average {load_start}", flush=True)
    started = time.perf_counter()
    trainees, teacher, batches = build_everything(args)
    times, cpu_times = measure(args, trainees, teacher, batches)
    seconds = time.perf_counter() - started
    print()
    print("\n".join(report(args, times, cpu_times)))
    if args.write:
        kind = "cuda" if device.type == "cuda" else "cpu"
        write_section(section(args, times, cpu_times, command, seconds, load_start), kind)
        print(f"\nwrote {os.path.relpath(RESULTS)}")
    return times


if __name__ == "__main__":
    main()
