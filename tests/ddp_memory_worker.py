"""CRD/CRCD memory banks on 2 Gloo ranks, each step under helper.engine.fast.no_host_sync, for tests/test_ddp.py.

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/ddp_memory_worker.py OUT

Each rank scores its own 3 samples of a fixed 6-sample global batch (the second step repeats dataset index 1
on both ranks, as DistributedSampler's padding can) and saves OUT/memory_rank<r>.pt: the state_dict of
ContrastMemory and RelationMemory after each step.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crd.memory import ContrastMemory  # noqa: E402
from crd.relation import RelationMemory  # noqa: E402
from helper.engine import fast  # noqa: E402

N_ROWS, DIM, K = 20, 8, 5
GLOBAL_Y = (torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([6, 7, 1, 1, 8, 9]))


def global_steps():
    """[(v1 [6, D], v2 [6, D], y [6], idx [6, K+1])] for both steps: the same on every rank."""
    gen = torch.Generator().manual_seed(1)
    steps = []
    for y in GLOBAL_Y:
        v1 = torch.nn.functional.normalize(torch.randn(6, DIM, generator=gen), dim=1)
        v2 = torch.nn.functional.normalize(torch.randn(6, DIM, generator=gen), dim=1)
        idx = torch.randint(N_ROWS, (6, K + 1), generator=gen)
        idx[:, 0] = y
        steps.append((v1, v2, y, idx))
    return steps


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    share = slice(3 * rank, 3 * rank + 3)
    states = {}
    for memory_class in (ContrastMemory, RelationMemory):
        torch.manual_seed(0)
        memory = memory_class(DIM, N_ROWS, K)
        states[memory_class.__name__] = []
        for v1, v2, y, idx in global_steps():
            v1 = v1[share].clone().requires_grad_()
            with fast.no_host_sync("cpu"):
                out_v1, out_v2 = memory(v1, v2[share], y[share], idx[share])
                (out_v1.sum() + out_v2.sum()).backward()
            states[memory_class.__name__].append({k: v.clone() for k, v in memory.state_dict().items()})
    torch.save(states, os.path.join(sys.argv[1], f"memory_rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
