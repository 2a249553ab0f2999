"""Multi-GPU training with torchrun and PyTorch DistributedDataParallel (DDP), one process per device.

    torchrun --nproc_per_node=N train_student.py --dataset imagenet ...     (the same for train_teacher.py)

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `setup(opt)` then joins the process group (NCCL on CUDA,
Gloo on CPU), picks cuda:LOCAL_RANK for --device auto/cuda, and sets opt.distributed, opt.rank and
opt.world_size. Without those variables (a plain `python train_*.py`) nothing here does anything.

What stays identical on every rank, and how:
* trainable parameters: DDP broadcasts them from rank 0 when it wraps them and averages their gradients;
  the student, the method's trainable modules and the CTKD temperature are wrapped together (`wrap`);
* buffers (BatchNorm statistics): each rank updates its own during an epoch (DDP's per-step buffer
  broadcast is off because it would also send CRD's memory banks every step); `broadcast_buffers`
  copies rank 0's to every rank after each epoch, before validation and checkpoints, which gives the
  values DDP's default (rank 0's statistics) would give;
* memory banks (CRD/CRCD): every rank applies the same update, built from the samples of all ranks
  (crd.memory); their buffers are listed in the owning module's `rank_consistent_buffers` and skipped
  by `broadcast_buffers`;
* metrics: sums and counts are added over ranks (`reduce_meters`; validation in helper.engine.loop).
The collectives any layer may use (rank, gathers, means) are helper.collectives, imported here.
"""
import inspect
import logging
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from helper.collectives import (  # noqa: F401
    all_finite,
    gather_objects,
    all_gather_equal,
    all_reduce_mean,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
)
from helper.errors import UserError

log = logging.getLogger("kd")

TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
RANK_SEED_STRIDE = 1_000_003  # rank r seeds its augmentation RNGs with seed + r * stride (rank 0: unchanged)
# torch >= 2.14 names DDP's per-forward buffer broadcast `forward_sync_buffers` (buffers still synced at
# construction); older versions call it `broadcast_buffers`, whose False also skips the sync at construction.
_NEW_BUFFER_FLAG = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters


def launched_by_torchrun(environ=None):
    """True when torchrun (torch.distributed.run) started this process: WORLD_SIZE, RANK, LOCAL_RANK are set."""
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def seed_offset():
    """Added to the per-epoch seed of this rank's augmentation and sampling RNGs (0 on rank 0 and without DDP)."""
    return RANK_SEED_STRIDE * get_rank()


def setup(opt):
    """Join torchrun's process group if launched by torchrun; sets opt.distributed, opt.rank, opt.world_size.

    opt.device (already resolved) becomes cuda:LOCAL_RANK when it is a CUDA device without an index;
    an explicit cuda:N is refused with several processes (each rank needs its own device).
    Ranks other than 0 log warnings only and show no progress bars.
    """
    opt.distributed, opt.rank, opt.world_size = False, 0, 1
    if not launched_by_torchrun():
        return opt
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(opt.device)
    if device.type == "cuda":
        if device.index is not None and world_size > 1:
            raise UserError(f"--device {device} names one GPU but torchrun starts {world_size} processes; "
                            "use --device cuda or auto (rank r uses cuda:LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                            "lower --nproc_per_node")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"--device {device}: torchrun runs are supported on cuda (NCCL) and cpu (Gloo)")
    if not is_distributed():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    opt.device = device
    opt.distributed, opt.rank, opt.world_size = True, dist.get_rank(), dist.get_world_size()
    if opt.rank != 0:
        log.setLevel(logging.WARNING)
        opt.no_progress = True
    log.info("distributed: %d processes (%s), rank 0 on %s; global batch = %d x --batch_size %d = %d",
             opt.world_size, backend, device, opt.world_size, opt.batch_size, opt.world_size * opt.batch_size)
    return opt


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup(wait=True):
    """Leave the process group (after a barrier when `wait`, so no rank leaves while others still work)."""
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def wrap(module, opt, find_unused_parameters=False):
    """`module` in DistributedDataParallel on opt.device, or `module` itself without a process group.

    Parameters and all buffers (memory banks included) are broadcast from rank 0 here, once; DDP's
    per-forward buffer broadcast is off: buffers are synchronised once per epoch by `broadcast_buffers`
    (see the module docstring).
    """
    if not is_distributed():
        return module
    if _NEW_BUFFER_FLAG:
        no_forward_sync = {"forward_sync_buffers": False}
    else:
        broadcast_buffers(module, include_consistent=True)
        no_forward_sync = {"broadcast_buffers": False}
    device = torch.device(opt.device)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
                                   **no_forward_sync)


def broadcast_buffers(*modules, include_consistent=False):
    """Copy rank 0's buffers to every rank, except those a module lists in `rank_consistent_buffers`."""
    if not is_distributed():
        return
    seen = set()
    for module in modules:
        if module is None:
            continue
        for owner in module.modules():
            skip = () if include_consistent else getattr(owner, "rank_consistent_buffers", ())
            for name, buffer in owner.named_buffers(recurse=False):
                if name not in skip and id(buffer) not in seen:
                    seen.add(id(buffer))
                    dist.broadcast(buffer, src=0)


def reduce_meters(meters, device):
    """{name: sum / count} of AverageMeters with sums and counts added over ranks (every rank gets the same).

    Every rank must hold the same meter names. Without a process group: each meter's own average.
    """
    if not is_distributed():
        return {name: meter.avg for name, meter in meters.items()}
    names = sorted(meters)
    sums = [torch.as_tensor(meters[n].sum, dtype=torch.float64, device=device).reshape(()) for n in names]
    counts = torch.tensor([float(meters[n].count) for n in names], dtype=torch.float64, device=device)
    totals = torch.stack([torch.stack(sums), counts], dim=1)
    dist.all_reduce(totals)
    by_name = {n: (s / max(c, 1.0)) for n, (s, c) in zip(names, totals.tolist())}
    return {name: by_name[name] for name in meters}


def together(fn):
    """Run fn() on every rank; a UserError on any rank is raised on every rank (so none waits for the others)."""
    error = None
    try:
        fn()
    except UserError as e:
        error = str(e)
    if is_distributed():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        raise UserError(error)
