"""The protocol of a run, recorded in results.json so tables never mix runs that differ in more than their seed."""
import os
import platform
import subprocess

import torch

from helper.util import plain_options

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
# Options that do not change the experiment (where files go, how often to print, how to resume) or that vary
# between the trials of one protocol (trial, seed).
NOT_PROTOCOL = frozenset({
    "model_path", "tb_path", "print_freq", "tb_freq", "save_freq", "num_workers", "resume", "overwrite",
    "allow_batch_change", "dry_run", "no_progress", "trial", "seed", "device", "rank", "distributed", "world_size",
    "plan", "plot", "data_root", "path_t", "model_name", "save_folder", "tb_folder", "recipe_applied", "explicit",
    "plan_line", "cpu_malloc", "cpu_malloc_tuned", "from_run", "run_name", "repdistiller_names", "no_recipe", "analyze",
})


def git_commit():
    """The code's commit (with '+dirty' when the tree has changes), or 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def environment(device):
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "git_commit": git_commit()}


def experiment_flags(opt):
    """Every option that defines the experiment, plus the global batch."""
    flags = {k: v for k, v in plain_options(opt).items() if k not in NOT_PROTOCOL}
    flags["global_batch"] = opt.batch_size * getattr(opt, "world_size", 1)
    return flags


def run_protocol(opt, shared=None):
    """{"flags", "seed", "trial", "teacher", "environment"}: what results.json records and tables group by."""
    protocol = {"flags": experiment_flags(opt), "seed": opt.seed, "trial": opt.trial,
                "environment": environment(opt.device)}
    if shared is not None:
        protocol["teacher"] = {"path": opt.path_t, "arch": shared.teacher_arch, "sha256": shared.teacher_sha256,
                               "accuracy": shared.teacher_acc}
    return protocol
