"""Time and peak memory of one CRD memory step (Tian, Krishnan, Isola, ICLR 2020): peer's gather vs exact fast forms.

A step is ContrastMemory.forward on both banks (scores, Z, momentum update) plus the backward to the anchors.
Each (K, path) runs in its own process so that peak memory is that path's own: on CPU the growth of the
resident set (ru_maxrss) over the first step, with glibc's mmap threshold fixed so freed blocks go back to
the system (its dynamic threshold otherwise keeps freed blocks resident); on CUDA the allocator's peak above
the bank and inputs. Time is the best of --repeats steps after the first.
Prints only.  .venv/bin/python benchmarks/crd_memory_bench.py [--device cuda] [--n-data 1281167] [--memory-dtype bfloat16]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crd.memory import MEMORY_DTYPES, ContrastMemory, choose_score_path  # noqa: E402

PATHS = ("gather", "dense", "sparse")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or a CUDA device such as cuda:0")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[4096, 16384], help="negatives per positive")
    p.add_argument("--dim", type=int, default=128, help="embedding size D")
    p.add_argument("--n-data", type=int, default=50000, help="memory rows N")
    p.add_argument("--repeats", type=int, default=3, help="timed steps after one untimed first step (best kept)")
    p.add_argument("--memory-dtype", default="float32", choices=list(MEMORY_DTYPES),
                   help="bank storage (--memory_dtype of train_student.py)")
    p.add_argument("--child", nargs=2, metavar=("K", "PATH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(args, K, device):
    """Unit anchors v1, v2 [B, D], distinct positives y [B] and indices idx [B, K+1] with y first."""
    gen = torch.Generator().manual_seed(0)
    v1 = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=gen), dim=1)
    v2 = torch.nn.functional.normalize(torch.randn(args.batch, args.dim, generator=gen), dim=1)
    y = torch.randperm(args.n_data, generator=gen)[:args.batch]
    idx = torch.randint(args.n_data, (args.batch, K + 1), generator=gen)
    idx[:, 0] = y
    return [t.to(device) for t in (v1, v2, y, idx)]


def one_step(memory, v1, v2, y, idx):
    v1, v2 = v1.clone().requires_grad_(), v2.clone().requires_grad_()
    out_v1, out_v2 = memory(v1, v2, y, idx)
    (out_v1.sum() + out_v2.sum()).backward()


def peak_of_first_step(memory, inputs, device):
    """Bytes above the bank and inputs at the peak of the first step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        one_step(memory, *inputs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one_step(memory, *inputs)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024


def best_seconds_per_step(memory, inputs, device, repeats):
    """Fastest of `repeats` steps (CUDA events on CUDA)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            one_step(memory, *inputs)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            one_step(memory, *inputs)
            times.append(time.perf_counter() - start)
    return min(times)


def run_child(args):
    """Measure one (K, path) and print it as one JSON line."""
    K, path = int(args.child[0]), args.child[1]
    device = torch.device(args.device)
    memory = ContrastMemory(args.dim, args.n_data, K, score_path=path, memory_dtype=args.memory_dtype).to(device)
    inputs = make_inputs(args, K, device)
    peak = peak_of_first_step(memory, inputs, device)
    print(json.dumps({"seconds": best_seconds_per_step(memory, inputs, device, args.repeats), "peak": peak}))


def measure(args, K, path):
    command = [sys.executable, os.path.abspath(__file__), "--child", str(K), path, "--device", args.device,
               "--batch", str(args.batch), "--dim", str(args.dim), "--n-data", str(args.n_data),
               "--repeats", str(args.repeats), "--memory-dtype", args.memory_dtype]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    bank_mib = 2 * args.n_data * args.dim * torch.finfo(MEMORY_DTYPES[args.memory_dtype]).bits / 8 / 2**20
    print(f"CRD memory step (2 banks, fwd+bwd) on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: B={args.batch} D={args.dim} N={args.n_data}, "
          f"{args.memory_dtype} banks ({bank_mib:.0f} MiB, not counted in the peaks)")
    print(f"{'K':>6} {'path':>7} {'ms/step':>9} {'peak MiB':>9} {'speed-up':>9} {'memory':>7}  auto picks")
    for K in args.ks:
        auto = choose_score_path(args.n_data, K + 1, args.dim)
        results = {path: measure(args, K, path) for path in PATHS}
        base = results["gather"]
        for path, r in results.items():
            print(f"{K:>6} {path:>7} {r['seconds'] * 1e3:>9.1f} {r['peak'] / 2**20:>9.1f} "
                  f"{base['seconds'] / r['seconds']:>8.1f}x {r['peak'] / max(base['peak'], 1):>6.2f}x  "
                  f"{'<- ' + auto if path == auto else ''}")


if __name__ == "__main__":
    main()
