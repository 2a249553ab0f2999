"""Memory banks of Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020.

Each bank holds one L2-normalised embedding per training sample ([N, D]). A batch scores its
anchors against K+1 rows per sample (the positive first), then moves the positive rows toward
the batch embeddings (momentum update + L2 renormalisation).

The peer's form copies the sampled rows to [B, K+1, D] ("gather"). Two exact forms avoid that copy:
"dense" scores every row with one GEMM ([B, N]) and reads the sampled entries; "sparse" gathers in
bounded column blocks. Both take the gradient w.r.t. the anchors with `embedding_bag` (weighted row
sums, no [B, K+1, D] copy) from the rows as they were before the update, as the peer's copy does.

Under torchrun (DDP) every rank scores its own batch against the bank, then all ranks apply the same
update built from the batches of all ranks (`rows_of_all_ranks`), and the normalisation constant is the
mean over ranks of the first batches: the banks stay identical on every rank, as a single process with
the global batch would keep them. Without a process group none of this runs (same numbers as before).

Banks may be stored in bfloat16 (`memory_dtype`, --memory_dtype) to halve their memory: rows are upcast
to float32 (in blocks) before every product, and scores, gradients, the update and Z are float32; the
only change is the rounding of the stored rows.
"""
import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from helper import collectives
from helper.errors import UserError

SCORE_PATHS = ("auto", "gather", "dense", "sparse")
MEMORY_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GATHER_BLOCK_ELEMENTS = 1 << 22  # rows x dims copied at once by the "sparse" path (16 MiB in float32)


def uniform_memory(n_rows, dim):
    """Initial bank [n_rows, dim], uniform in [-stdv, stdv] with stdv = 1/sqrt(dim/3), as the peer draws it."""
    stdv = 1. / math.sqrt(dim / 3)
    return torch.rand(n_rows, dim).mul_(2 * stdv).add_(-stdv)


def compute_dtype(memory):
    """The dtype a bank's scores and updates are computed in: its own, float32 for a bfloat16 bank."""
    return torch.promote_types(memory.dtype, torch.float32)


def bank_rows(memory, index, dtype):
    """memory[index] as `dtype` (index of any shape -> [*index.shape, D]); a fresh tensor."""
    return memory.index_select(0, index.reshape(-1)).to(dtype).view(*index.shape, memory.shape[1])


def upcast_row_blocks(memory, dtype):
    """(first row, memory[first row:...] as `dtype`) for consecutive blocks of at most GATHER_BLOCK_ELEMENTS values:
    a bank stored in a narrower dtype is never copied whole."""
    rows = max(1, GATHER_BLOCK_ELEMENTS // memory.shape[1])
    for start in range(0, memory.shape[0], rows):
        yield start, memory[start:start + rows].to(dtype)


def times_bank_t(anchor, memory):
    """anchor [A, D] @ memory.T -> [A, N] in anchor's dtype; a bank in another dtype is upcast in row blocks."""
    if memory.dtype == anchor.dtype:
        return anchor @ memory.T
    return torch.cat([anchor @ block.T for _, block in upcast_row_blocks(memory, anchor.dtype)], dim=1)


def times_bank(dense, memory):
    """dense [B, N] @ memory [N, D] -> [B, D] in dense's dtype; a bank in another dtype is upcast in row blocks."""
    if memory.dtype == dense.dtype:
        return dense @ memory
    return sum(dense[:, start:start + block.shape[0]] @ block
               for start, block in upcast_row_blocks(memory, dense.dtype))


def weighted_row_sums(memory, idx, weights, dense=False):
    """sum_k weights[b, k] * memory[idx[b, k]] -> [B, D] in weights' dtype, without a [B, K+1, D] copy.

    embedding_bag when the dtypes agree. A bank in another dtype: with `dense`, the weights scattered into a
    [B, N] matrix times the bank (one GEMM, as the dense scores); otherwise rows read in column blocks of idx."""
    if memory.dtype == weights.dtype:
        return F.embedding_bag(idx, memory, per_sample_weights=weights, mode="sum")
    if dense:
        return times_bank(weights.new_zeros(idx.shape[0], memory.shape[0]).scatter_add_(1, idx, weights), memory)
    columns = max(1, GATHER_BLOCK_ELEMENTS // (idx.shape[0] * memory.shape[1]))
    return sum(torch.bmm(w.unsqueeze(1), bank_rows(memory, block, w.dtype)).squeeze(1)
               for block, w in zip(idx.split(columns, dim=1), weights.split(columns, dim=1)))


def sample_contrast_indices(y, n_rows, K):
    """Uniform row indices [B, K+1] on y's device with the positives y [B] in column 0."""
    idx = torch.randint(n_rows, (y.shape[0], K + 1), device=y.device)
    idx[:, 0] = y
    return idx


def choose_score_path(n_rows, width, dim):
    """'dense' when the [B, N] score matrix is at most half the size of the [B, K+1, D] copy, else 'sparse'.

    The GEMM does N/(K+1) times the multiply-adds of the copy but runs far faster per multiply-add; on CPU
    (benchmarks/crd_memory_bench.py) this size rule also picked the faster form at N = 50k and 1.28M.
    """
    return "dense" if 2 * n_rows <= width * dim else "sparse"


def gather_scores(memory, anchor, idx):
    """The peer's form: rows memory[idx] copied to [B, K+1, D], bmm with anchor [B, D] -> [B, K+1]."""
    return torch.bmm(bank_rows(memory, idx, anchor.dtype), anchor.unsqueeze(2)).squeeze(2)


def dense_scores(memory, anchor, idx):
    """anchor [B, D] against every row of memory [N, D] in one GEMM, read at idx [B, K+1] -> [B, K+1]."""
    return times_bank_t(anchor, memory).gather(1, idx)


def blockwise_gather_scores(memory, anchor, idx):
    """gather_scores over column blocks of idx, copying at most GATHER_BLOCK_ELEMENTS values at once -> [B, K+1]."""
    columns = max(1, GATHER_BLOCK_ELEMENTS // (idx.shape[0] * memory.shape[1]))
    return torch.cat([gather_scores(memory, anchor, block) for block in idx.split(columns, dim=1)], dim=1)


@torch.no_grad()
def momentum_update_(memory, y, value, momentum):
    """memory[y] <- L2-normalise(momentum * memory[y] + (1 - momentum) * value), in place; y [B], value [B, D].

    Computed in value's dtype, then stored in the bank's."""
    rows = bank_rows(memory, y, value.dtype).mul_(momentum).add_(value * (1 - momentum))
    memory.index_copy_(0, y, rows.div_(rows.pow(2).sum(1, keepdim=True).sqrt()).to(memory.dtype))


def first_occurrence_positions(y):
    """[M] -> [M]: for each position j, the first position i with y[i] == y[j] (fixed shapes: no host sync)."""
    sorted_y, order = torch.sort(y, stable=True)
    positions = torch.arange(y.shape[0], device=y.device)
    run_start = torch.ones_like(sorted_y, dtype=torch.bool)
    run_start[1:] = sorted_y[1:] != sorted_y[:-1]
    start = torch.where(run_start, positions, 0).cummax(0).values  # each sorted entry -> start of its run
    first = torch.empty_like(order)
    first[order] = order[start]  # a stable sort puts a run's first position at its start
    return first


def rows_of_all_ranks(y, *values):
    """The momentum update's rows: (y [B], *values [B, D]) unchanged in a single process.

    Under DDP: the indices and (detached) values of every rank's batch in rank order (the ranks' batches have
    equal sizes), every repeat of a dataset index carrying the value of its first occurrence (DistributedSampler
    pads the last shares with repeated samples). Repeats then write identical rows, so every rank's bank
    gets the update a single process would make with each index once, without a host sync.
    """
    if not collectives.is_distributed():
        return (y, *values)
    width = [v.shape[1] for v in values]
    y_all, values_all = collectives.all_gather_equal(y, torch.cat([v.detach() for v in values], dim=1))
    return (y_all, *values_all[first_occurrence_positions(y_all)].split(width, dim=1))


class _ScoresThenUpdate(torch.autograd.Function):
    """Scores [B, K+1] of anchor [B, D] against memory rows idx, then the momentum update of memory[y].

    Backward: grad_anchor[b] = sum_k grad[b, k] * memory_before_update[idx[b, k]], as weighted row sums
    (embedding_bag) over the current bank plus, for the entries that hit an updated row, the change
    (row before - row after) of that row. Autograd's version check refuses a backward after the bank
    changed again (e.g. a second forward before this backward).
    """

    @staticmethod
    def forward(ctx, anchor, memory, idx, y, value, momentum, score_fn):
        scores = score_fn(memory, anchor, idx)
        rows_before = bank_rows(memory, y, anchor.dtype)
        momentum_update_(memory, y, value, momentum)
        change = torch.cat([rows_before - bank_rows(memory, y, anchor.dtype),
                            rows_before.new_zeros(1, memory.shape[1])])
        ctx.save_for_backward(memory, idx, y, change)
        ctx.dense = score_fn is dense_scores
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_scores):
        memory, idx, y, change = ctx.saved_tensors
        slot = torch.full((memory.shape[0],), y.shape[0], dtype=torch.long, device=idx.device)
        slot[y] = torch.arange(y.shape[0], device=idx.device)  # row -> its entry in `change`; others -> zero row
        grad_anchor = weighted_row_sums(memory, idx, grad_scores, ctx.dense)
        grad_anchor += F.embedding_bag(slot[idx], change, per_sample_weights=grad_scores, mode="sum")
        return grad_anchor, None, None, None, None, None, None


class ContrastMemory(nn.Module):
    """Two memory banks [outputSize, inputSize] of CRD (Tian, Krishnan, Isola, ICLR 2020), K negatives per positive."""

    # Kept identical across DDP ranks by the collective updates below; helper.distributed does not re-broadcast them.
    rank_consistent_buffers = ("params", "memory_v1", "memory_v2")

    def __init__(self, inputSize, outputSize, K, T=0.07, momentum=0.5, score_path="auto", memory_dtype="float32"):
        super().__init__()
        check_memory_args(inputSize, outputSize, K, T, momentum, score_path, memory_dtype)
        self.K, self.T, self.momentum, self.score_path = K, T, momentum, score_path
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        dtype = MEMORY_DTYPES[memory_dtype]
        self.register_buffer("memory_v1", self.initial_bank(outputSize, inputSize).to(dtype))
        self.register_buffer("memory_v2", self.initial_bank(outputSize, inputSize).to(dtype))

    def initial_bank(self, n_rows, dim):
        """A bank [n_rows, dim] before it is cast to memory_dtype."""
        return uniform_memory(n_rows, dim)

    def forward(self, v1, v2, y, idx=None):
        """v1, v2: embeddings [B, D] (student, teacher); y: dataset indices [B]; idx: [B, K+1], positive first.

        Returns (out_v1, out_v2), each [B, K+1, 1]: exp(<v1, memory_v2[idx]>/T) / Z_v1 and
        exp(<v2, memory_v1[idx]>/T) / Z_v2, then memory_v1[y] moves toward v1 and memory_v2[y] toward v2.
        """
        if idx is None:
            idx = sample_contrast_indices(y, self.memory_v1.shape[0], self.K)
        path = self.resolve_path(idx.shape[1])
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.to(compute_dtype(self.memory_v1)), v2.to(compute_dtype(self.memory_v2))
            rows, new_v1, new_v2 = rows_of_all_ranks(y, v1, v2)
            exp_v2 = torch.exp(self.scores_then_update(self.memory_v1, v2, idx, rows, new_v1, path) / self.T)
            exp_v1 = torch.exp(self.scores_then_update(self.memory_v2, v1, idx, rows, new_v2, path) / self.T)
            z = self.normalisers(exp_v1, exp_v2)
            return (exp_v1 / z[0]).unsqueeze(2), (exp_v2 / z[1]).unsqueeze(2)

    def resolve_path(self, width):
        """The score form for idx of `width` = K+1 columns: self.score_path, or chosen by size when 'auto'."""
        if self.score_path != "auto":
            return self.score_path
        return choose_score_path(self.memory_v1.shape[0], width, self.memory_v1.shape[1])

    def scores_then_update(self, memory, anchor, idx, y, value, path):
        """Scores [B, K+1] of anchor [B, D] against memory rows idx before the update, then memory[y] toward value.

        y [M], value [M, D]: the rows to update (M = B in a single process, all ranks' rows under DDP)."""
        value = value.detach()
        if path == "gather":
            scores = gather_scores(memory, anchor, idx)
            momentum_update_(memory, y, value, self.momentum)
            return scores
        score_fn = dense_scores if path == "dense" else blockwise_gather_scores
        return _ScoresThenUpdate.apply(anchor, memory, idx, y, value, self.momentum, score_fn)

    def normalisers(self, exp_v1, exp_v2):
        """[Z_v1, Z_v2]: mean(exp) * N on the first batch, then fixed; kept in params[2:4] without a host sync.

        Under DDP the means are averaged over ranks (every rank then holds the same Z)."""
        with torch.no_grad():
            first_batch = torch.stack([exp_v1.mean(), exp_v2.mean()]) * self.memory_v1.shape[0]
            if collectives.is_distributed():
                first_batch = collectives.all_reduce_mean(first_batch)
            self.params[2:4] = torch.where(self.params[2:4] < 0, first_batch, self.params[2:4])
        return self.params[2:4].clone()


def check_memory_args(inputSize, outputSize, K, T, momentum, score_path="auto", memory_dtype="float32"):
    """One-line UserError for a memory that cannot work."""
    if inputSize < 1:
        raise UserError(f"--feat_dim must be >= 1, got {inputSize}")
    if outputSize < 1:
        raise UserError(f"the CRD memory needs a non-empty training set, got n_data={outputSize}")
    if K < 1:
        raise UserError(f"--nce_k must be >= 1, got {K}")
    if not T > 0:
        raise UserError(f"--nce_t must be > 0, got {T}")
    if not 0 <= momentum <= 1:
        raise UserError(f"--nce_m must be in [0, 1], got {momentum}")
    if score_path not in SCORE_PATHS:
        raise UserError(f"unknown CRD score path {score_path!r}; choose one of: {', '.join(SCORE_PATHS)}")
    if memory_dtype not in MEMORY_DTYPES:
        raise UserError(f"unknown --memory_dtype {memory_dtype!r}; choose one of: {', '.join(MEMORY_DTYPES)}")
