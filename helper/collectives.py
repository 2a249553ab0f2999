"""Collectives over the ranks of a torchrun process group, for any layer (the memory banks of crd/ use them):
without a process group each is the single-process identity. Starting and wrapping the processes is
helper.engine.distributed."""
import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """Rank 0, or a run without a process group: the one process that writes files and logs."""
    return get_rank() == 0


def all_gather_equal(*tensors):
    """Each tensor [n, ...] of every rank concatenated along dim 0 in rank order -> [world_size * n, ...].

    Every rank must pass the same shapes: the training loaders give the ranks equal shares (DistributedSampler
    pads; the GPU-resident loader trims), so each step's batches have equal sizes. No host sync. Without a
    process group the tensors come back unchanged.
    """
    if not is_distributed():
        return tensors
    out = []
    for tensor in tensors:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


def all_reduce_mean(tensor):
    """The mean of `tensor` over ranks (a new tensor); `tensor` itself without a process group."""
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def all_finite(tensor):
    """True when `tensor` is finite on every rank (one host sync; an all-reduce under torchrun)."""
    flag = torch.isfinite(torch.as_tensor(tensor)).all().to(torch.int32)
    if is_distributed():
        flag = flag.reshape(1).clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_objects(obj):
    """[the object of rank 0, of rank 1, ...] (picklable objects, every rank gets the list); [obj] alone."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
