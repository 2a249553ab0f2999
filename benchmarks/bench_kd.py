"""Step time, throughput and peak memory of the KD, CRD and CRCD training steps: RepDistiller's path vs the fast path.

One process, one run. Every row builds the run as train_student.main does (helper.session.memory.student_options,
dataset.build_loaders, the recipe, helper.session.memory.trainable_student: network, probe, Distiller,
plug-ins, TermWeights, SGD, helper.engine.fast.prepare_models / wrap_step) and times the real helper.engine.loop.train_epoch
over CIFAR-shaped random uint8 images (the CIFAR-100 loader is replaced by a generator of such arrays, so the
DataLoader path runs its per-sample PIL transforms and the GPU loader its on-device augmentation unchanged).

Settings (cumulative from gpu_loader on):
  repdistiller   torch DataLoader (per-sample torchvision transforms, --num_workers), eager fp32, and one host
                 sync per step (RepDistiller's loss.item() after the forward): the baseline (a)
  dataloader     the same without the per-step sync (--loader torch)
  gpu_loader     dataset resident on the device, augmented there (--loader device, the default for CIFAR)
  +channels_last, +bf16 (--amp bf16), +compile (--compile), +cuda_graphs (--cuda_graphs, CUDA only)

A step's time is the interval between two consecutive batch requests of train_epoch (data, forward, backward,
optimizer step, meters), measured with CUDA events on a GPU and perf_counter on the CPU; the median over
--steps steps after --warmup steps is reported, with the fastest and slowest step. "host CPU ms/step" is the
median CPU time of the main process (all its threads; DataLoader workers not counted) per step: on a GPU, the
host's launch cost (a step whose host time approaches its step time is launch-bound); on the CPU, close to the
step time when the process has the cores to itself. Peak memory: torch.cuda.max_memory_allocated over the row
(dataset, models, optimizer and step) on a GPU; on the CPU the peak resident set of the main process (VmHWM,
reset per row through /proc/self/clear_refs, with glibc returning freed large blocks; DataLoader workers not
counted). "syncs/step": medians per step of device-to-host reads made by the training step and, apart, by the
loader's batch fetch in the main process (CUDA sync-debug warnings on a GPU; on the CPU, patched Tensor
conversions item/tolist/bool/int/float/index, which would be syncs on a GPU; there the loader count of the
dataloader rows also counts the CPU-only conversions of in-process transforms when --num_workers is 0). The
last step, which ends at the epoch's print point (its one finite-loss check), is left out of the step count.

  .venv/bin/python benchmarks/bench_kd.py --device cuda --write      # full run on a GPU, writes RESULTS.md
  .venv/bin/python benchmarks/bench_kd.py --quick                    # CI-sized smoke run on the CPU (< 60 s)
"""
import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dataset as dataset_module  # noqa: E402
from dataset import build_loaders  # noqa: E402
from dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from distiller_zoo.base import get_distiller_class  # noqa: E402
from helper.engine import distributed, fast  # noqa: E402
from helper.session.memory import student_options, trainable_student  # noqa: E402
from helper.student.build import Shared  # noqa: E402
from helper.engine.loop import train_epoch  # noqa: E402
from helper.util import resolve_device, set_seed  # noqa: E402
from models import build_model  # noqa: E402
from results_md import cpu_name, load_average, replace_section, section_head  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
NUM_CLASSES = 100


@dataclass(frozen=True)
class Setting:
    loader: str = "gpu"          # "dataloader" (torch DataLoader) or "gpu" (--gpu_loader)
    host_sync: bool = False      # RepDistiller's loss.item() each step
    channels_last: bool = False
    amp: str = "none"
    compile: bool = False
    cuda_graphs: bool = False


SETTINGS = {
    "repdistiller": Setting(loader="dataloader", host_sync=True),
    "dataloader": Setting(loader="dataloader"),
    "gpu_loader": Setting(),
    "+channels_last": Setting(channels_last=True),
    "+bf16": Setting(channels_last=True, amp="bf16"),
    "+compile": Setting(channels_last=True, amp="bf16", compile=True),
    "+cuda_graphs": Setting(channels_last=True, amp="bf16", compile=True, cuda_graphs=True),
}
BASELINE = "repdistiller"


def method_specs(args):
    """name -> (--distill, extra train_student flags); CRCD with its code's settings (K, T 0.05, -r 1 -a 0.9 -b 1).

    *_bf16bank: the same with --memory_dtype bfloat16 (memory banks stored in bfloat16)."""
    crcd = ["--nce_t", "0.05", "-r", "1", "-a", "0.9", "-b", "1"]
    bf16_bank = ["--memory_dtype", "bfloat16"]
    return {
        "kd": ("kd", []),
        "crd": ("crd", ["--nce_k", str(args.crd_k)]),
        "crd_bf16bank": ("crd", ["--nce_k", str(args.crd_k)] + bf16_bank),
        "crcd_k500": ("crcd", ["--nce_k", "500"] + crcd),
        "crcd_k16384": ("crcd", ["--nce_k", "16384"] + crcd),
        "crcd_k16384_bf16bank": ("crcd", ["--nce_k", "16384"] + crcd + bf16_bank),
    }


def uses_short_settings(method):
    """CRCD and bf16-bank rows run only --crcd_settings (by default the baseline and the fastest setting)."""
    return method.startswith("crcd") or method.endswith("bf16bank")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (200 on a GPU, 5 on the CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (30 on a GPU, 1 on the CPU; +2 for compiled rows)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized: resnet20 -> resnet8, batch 8, 512 images, 2 steps, settings repdistiller and "
                        "+bf16 (which includes gpu_loader and channels_last), no compile")
    p.add_argument("--write", action="store_true", help=f"write this device's section of {os.path.relpath(RESULTS)}")
    p.add_argument("--teacher", default=None, help="teacher network (resnet32x4)")
    p.add_argument("--student", default=None, help="student network (resnet8x4)")
    p.add_argument("--batch", type=int, default=None, help="batch size (64)")
    p.add_argument("--images", type=int, default=None, help="training images, at most 50000 (50000)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="DataLoader workers of the dataloader rows (8 on a GPU, the CPU count on the CPU)")
    p.add_argument("--crd_k", type=int, default=16384, help="CRD negatives (16384)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (torch's default; 1 with --quick). On a CPU shared with other jobs, 1 "
                        "avoids OpenMP threads spinning at barriers while a sibling thread is descheduled")
    p.add_argument("--methods", default="kd,crd,crd_bf16bank,crcd_k500,crcd_k16384,crcd_k16384_bf16bank",
                   help="comma-separated rows' methods")
    p.add_argument("--settings", default=None,
                   help="comma-separated settings for kd and crd (all that apply to the device; no compile with "
                        "--quick): " + ", ".join(SETTINGS))
    p.add_argument("--crcd_settings", default=None,
                   help="settings of the CRCD and bf16-bank rows (the first and last of --settings)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    args.device = str(device)
    cuda = device.type == "cuda"
    quick = args.quick
    defaults = dict(teacher="resnet20" if quick else "resnet32x4", student="resnet8" if quick else "resnet8x4",
                    batch=8 if quick else 64, images=512 if quick else 50000,
                    steps=2 if quick else (200 if cuda else 5), warmup=1 if quick else (30 if cuda else 1),
                    num_workers=(0 if quick else (8 if cuda else os.cpu_count() or 1)),
                    threads=1 if quick else torch.get_num_threads())
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 < args.images <= 50000:
        p.error("--images must be in 1..50000")
    applicable = [s for s in SETTINGS if cuda or not SETTINGS[s].cuda_graphs]
    if quick:
        applicable = [BASELINE, "+bf16"]
    args.settings = _names(p, args.settings, applicable, SETTINGS, "--settings")
    args.crcd_settings = _names(p, args.crcd_settings, sorted({args.settings[0], args.settings[-1]},
                                                               key=args.settings.index), SETTINGS, "--crcd_settings")
    args.methods = _names(p, args.methods, None, method_specs(args), "--methods")
    return args


def _names(parser, text, default, known, flag):
    if text is None:
        return list(default)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{flag}: unknown {unknown or 'empty'}; choose from {', '.join(known)}")
    return names


# ---------------------------------------------------------------------------------------------------------------
# Data: CIFAR-shaped random uint8 images served through the real build_loaders.

def install_synthetic_cifar(n_images, seed=0):
    """Make dataset.build_loaders read `n_images` random 32x32x3 uint8 images (100 balanced classes) as cifar100."""
    rng = np.random.default_rng(seed)
    train = (rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8), np.arange(n_images) % NUM_CLASSES)
    val = (rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), np.arange(256) % NUM_CLASSES)
    dataset_module._ARRAY_DATASETS["cifar100"] = (lambda root, is_train: train if is_train else val,
                                                 CIFAR100_MEAN, CIFAR100_STD, NUM_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# Timing and memory.

class Clock:
    """Marks on the device timeline (CUDA events) or the host clock, plus the process's CPU time; seconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks, self.cpu_marks = [], []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        self.cpu_marks.append(time.process_time())

    def durations(self):
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def cpu_durations(self):
        """CPU time (all threads of this process, DataLoader workers excluded) between consecutive marks."""
        return [b - a for a, b in zip(self.cpu_marks, self.cpu_marks[1:])]


class TimedLoader:
    """Yields `n` batches of `loader` (restarting it when exhausted), marking the clock at every request.

    With a sync counter, also counts the reads made while fetching a batch (`fetch_syncs`) apart from those made
    between two requests, i.e. by the training step (`step_syncs`).
    """

    def __init__(self, loader, n, clock, sync_counter=None):
        self.loader, self.n, self.clock = loader, n, clock
        self.count = sync_counter or (lambda: 0)
        self.fetch_syncs, self.step_syncs = [], []
        self._fetched = None

    def __len__(self):
        return self.n

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(self.n):
            self._request()
            before = self.count()
            try:
                items = next(iterator)
            except StopIteration:
                iterator = iter(self.loader)
                items = next(iterator)
            self._fetched = self.count()
            self.fetch_syncs.append(self._fetched - before)
            yield items
        self._request()

    def _request(self):
        self.clock.mark()
        if self._fetched is not None:
            self.step_syncs.append(self.count() - self._fetched)


class SyncCounter:
    """Counts device-to-host reads: CUDA sync-debug warnings on a GPU, patched Tensor conversions on the CPU."""

    def __init__(self, device):
        self.device = device
        self.guard = fast.no_host_sync(device, action="warn" if device.type == "cuda" else "record")
        self.caught = None

    def __enter__(self):
        if self.device.type == "cuda":
            self._warnings = warnings.catch_warnings(record=True)
            self.caught = self._warnings.__enter__()
            warnings.simplefilter("always")
        self.guard.__enter__()
        return self

    def __exit__(self, *exc):
        self.guard.__exit__(*exc)
        if self.device.type == "cuda":
            self._warnings.__exit__(*exc)
        return False

    def __call__(self):
        if self.device.type == "cuda":
            return sum(1 for w in self.caught if "synchroniz" in str(w.message).lower())
        return len(self.guard.events)


def release_freed_memory():
    """glibc: serve blocks >= 128 KiB by mmap so that freed ones leave the resident set (per-row CPU peaks)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 131072)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def reset_peak(device):
    gc.collect()  # the fast path's forward wrappers and compiled modules form reference cycles: free earlier rows
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------------------------
# One row: build the run as train_student.main does, then time train_epoch.

def build_opt(args, distill, extra, setting):
    argv = ["--path_t", "unused.pth", "--distill", distill, "--model_s", args.student, "--device", args.device,
            "--batch_size", str(args.batch), "--num_workers", str(args.num_workers), "--no_progress",
            "--loader", "device" if setting.loader == "gpu" else "torch"] + extra
    opt, explicit = student_options(argv)
    opt.amp, opt.channels_last = setting.amp, setting.channels_last
    opt.compile, opt.cuda_graphs = setting.compile, setting.cuda_graphs
    return fast.check_fast_args(opt), explicit


def with_host_sync(compute):
    """RepDistiller's per-step loss.item() after the forward (its `losses.update(loss.item(), ...)`)."""
    def step(*args):
        logits, terms = compute(*args)
        torch.stack([value.detach().float() for value in terms.values()]).sum().item()
        return logits, terms
    return step


def run_row(args, method_name, setting_name):
    distill, extra = method_specs(args)[method_name]
    setting = SETTINGS[setting_name]
    device = torch.device(args.device)
    torch._dynamo.reset()
    set_seed(0)
    opt, explicit = build_opt(args, distill, extra, setting)
    method = get_distiller_class(opt.distill)
    needs = method.needs
    reset_peak(device)
    data = build_loaders(opt, with_index=needs.index or needs.contrast_index, strong_view=needs.strong_view)
    teacher = build_model(args.teacher, data.num_classes).to(device).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    shared = Shared(data=data, teacher=teacher, teacher_arch=args.teacher, teacher_sha256="bench")
    trainee = trainable_student(opt, shared, explicit).trainee
    fast.prepare_models(opt, None, teacher)
    if setting.host_sync:
        trainee.compute = with_host_sync(trainee.compute)
    warmup = args.warmup + (2 if setting.compile else 0)
    clock = Clock(device)
    with SyncCounter(device) as syncs:
        loader = TimedLoader(data.train_loader, warmup + args.steps, clock, syncs)
        train_epoch(1, loader, [trainee], device, teacher=teacher)
    if trainee.failed:
        raise RuntimeError(trainee.failed)
    stats = distributed.reduce_meters(trainee.meters, device)
    times = clock.durations()[warmup:]
    step = statistics.median(times)
    row = dict(method=method_name, setting=setting_name, step=step, images_s=args.batch / step,
               step_min=min(times), step_max=max(times), cpu=statistics.median(clock.cpu_durations()[warmup:]),
               peak=peak_bytes(device), step_syncs=statistics.median(loader.step_syncs[warmup:-1] or [0]),
               fetch_syncs=statistics.median(loader.fetch_syncs[warmup:]), loss=stats["loss"], steps=len(times))
    del data, teacher, trainee, shared
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------------------------------------------------
# Report.

def machine(device):
    lines = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    lines.append(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    import torchvision
    lines.append(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                 f"Python {platform.python_version()}")
    return lines


def table(rows, device):
    """Markdown table; speed-up vs the baseline row of the same method, and step time vs KD's in the same setting."""
    by = {(r["method"], r["setting"]): r for r in rows}
    memory = "peak GPU MiB (max_memory_allocated)" if device.type == "cuda" else "peak RSS MiB (main process)"
    out = [f"| method | setting | step ms (median) | min-max ms | images/s | speed-up vs {BASELINE} | step vs KD "
           f"| host CPU ms/step | {memory} | syncs/step: step, loader |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['method']} | {r['setting']} | failed: {r['error']} | | | | | | | |")
            continue
        base = by.get((r["method"], BASELINE))
        kd = by.get(("kd", r["setting"]))
        speed = f"{base['step'] / r['step']:.2f}x" if base and "step" in base else "-"
        vs_kd = f"{r['step'] / kd['step']:.2f}x" if kd and "step" in kd and r["method"] != "kd" else "-"
        out.append(f"| {r['method']} | {r['setting']} | {r['step'] * 1e3:.1f} | {r['step_min'] * 1e3:.0f}-"
                   f"{r['step_max'] * 1e3:.0f} | {r['images_s']:.1f} | {speed} | {vs_kd} | {r['cpu'] * 1e3:.0f} | "
                   f"{r['peak'] / 2**20:.0f} | {r['step_syncs']:g}, {r['fetch_syncs']:g} |")
    return out


def section(args, rows, device, command, seconds, load_start):
    kind = "cuda" if device.type == "cuda" else "cpu"
    title = "GPU figures" if kind == "cuda" else "CPU figures (not GPU figures)"
    lines = section_head(f"bench_kd:{kind}", title, command, machine(device), load_start)
    lines += [f"Run: teacher {args.teacher} -> student {args.student}, batch {args.batch}, {args.images} random "
              f"CIFAR-shaped images, {args.steps} timed steps after {args.warmup} warm-up steps (+2 for compiled "
              f"rows), DataLoader workers {args.num_workers}, CRD K={args.crd_k}; {seconds:.0f} s in all.", "", ]
    lines += table(rows, device)
    lines += ["", f"<!-- /bench_kd:{kind} -->"]
    return lines


def write_results(args, rows, device, command, seconds, load_start):
    kind = "cuda" if device.type == "cuda" else "cpu"
    replace_section(f"bench_kd:{kind}", section(args, rows, device, command, seconds, load_start), RESULTS,
                    header=RESULTS_HEADER)


RESULTS_HEADER = """# KD step benchmark (benchmarks/bench_kd.py)

Written by `benchmarks/bench_kd.py --write`; each device kind (CPU, GPU) has its own section, replaced by the
next `--write` run on that kind. See the script's docstring for what is measured.

<!-- bench_kd:cuda -->
## GPU figures

Not measured yet: run `python benchmarks/bench_kd.py --device cuda --write` on a GPU to fill this section.

<!-- /bench_kd:cuda -->
"""


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # CUDA events and synchronize() act on the current device
    torch.set_num_threads(args.threads)
    release_freed_memory()
    install_synthetic_cifar(args.images)
    command = "python benchmarks/bench_kd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = load_average()
    print(f"bench_kd on {device}: " + "; ".join(machine(device)) + f"; load average {load_start}", flush=True)
    started = time.perf_counter()
    plan = [(m, s) for m in args.methods for s in (args.crcd_settings if uses_short_settings(m) else args.settings)]
    rows = []
    for method_name, setting_name in plan:
        t0 = time.perf_counter()
        try:
            row = run_row(args, method_name, setting_name)
        except Exception as error:  # a row that cannot run (e.g. compile unavailable) is reported, not fatal
            traceback.print_exc()
            row = dict(method=method_name, setting=setting_name,
                       error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160])
        rows.append(row)
        detail = (f"{row['step'] * 1e3:.1f} ms/step, {row['images_s']:.1f} images/s, loss {row['loss']:.3f}"
                  if "step" in row else row["error"])
        print(f"  {method_name:>12} {setting_name:<15} {detail}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    print()
    print("\n".join(table(rows, device)))
    if args.write:
        write_results(args, rows, device, command, seconds, load_start)
        print(f"\nwrote {os.path.relpath(RESULTS)}")
    return rows


if __name__ == "__main__":
    main()
