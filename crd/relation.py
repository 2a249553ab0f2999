"""Anchor relations of Zhu et al., "Complementary Relation Contrastive Distillation", CVPR 2021, without [B, B, K+1, D].

For a sample b, an anchor a (the bank row of another batch sample, p = memory[y_a]) and a sampled row
w = memory[idx[b, k]], the CRCD code scores the anchor-to-embedding relation r = v_b - p + e against the
anchor-to-row relation q = w - p + e, where e is the constant vector with every coordinate 1e-6:
cos[a, b, k] = <q, r> / (max(|q|, 1e-12) max(|r|, 1e-12)). It builds q for every (a, b, k), a [B, B, K+1, D]
tensor. Expanding the products, every term is a plain dot product (s(x) = sum of x's coordinates, D the size):

    <q, r> = <w, v> - <w, p> - <p, v> + <p, p> + e (s(w) + s(v) - 2 s(p)) + e^2 D
    |q|^2  = <w, w> + <p, p> - 2 <w, p> + 2 e (s(w) - s(p)) + e^2 D
    |r|^2  = <v, v> + <p, p> - 2 <p, v> + 2 e (s(v) - s(p)) + e^2 D

so the scores need <w, v> ([B, K+1], CRD's scores), <p, v> ([B, B]), <w, p> ([B, B, K+1], no gradient: both are
bank rows) and per-vector sums and squared norms: O(B^2 K) memory. Where w is the anchor's own row
(idx[b, k] == y_a) q is exactly e, which the expansion would only reach through cancellation of O(1) terms;
those entries are set exactly (|q|^2 = e^2 D, <q, r> = e (s(v) - s(p)) + e^2 D).
"""
from typing import NamedTuple

import torch

import crd.memory as memory_module
from crd.memory import (ContrastMemory, bank_rows, compute_dtype, rows_of_all_ranks, sample_contrast_indices,
                        times_bank_t, upcast_row_blocks)

RELATION_SHIFT = 1e-6  # the CRCD code adds 1e-6 to every coordinate of each relation vector
NORM_FLOOR = 1e-12     # F.normalize's floor on a norm


class RowStats(NamedTuple):
    """Bank quantities of one direction, taken before the momentum update (no gradient)."""
    gram: torch.Tensor        # [A, B, K+1]: <memory[y_a], memory[idx[b, k]]>
    row_sum: torch.Tensor     # [B, K+1]: coordinate sum of memory[idx[b, k]]
    row_sq: torch.Tensor      # [B, K+1]: squared norm of memory[idx[b, k]]
    anchor_sum: torch.Tensor  # [A]: coordinate sum of memory[y_a]
    anchor_sq: torch.Tensor   # [A]: squared norm of memory[y_a]
    same: torch.Tensor        # [A, B, K+1] bool: idx[b, k] == y_a


def normalise_rows_(bank):
    """Scale each row of bank [N, D] to unit L2 norm, in place, as the CRCD code does to its initial banks."""
    return bank.div_(bank.pow(2).sum(1, keepdim=True).sqrt())


def anchor_gram(memory, anchors, idx, path):
    """<anchors[a], memory[idx[b, k]]> -> [A, B, K+1] for anchors [A, D], idx [B, K+1].

    "dense": one GEMM against every row ([A, N]) read at idx; otherwise rows are copied in blocks of at most
    crd.memory.GATHER_BLOCK_ELEMENTS values.
    """
    if path == "dense":
        return times_bank_t(anchors, memory)[:, idx]
    per_block = max(1, memory_module.GATHER_BLOCK_ELEMENTS // (idx.shape[1] * memory.shape[1]))
    blocks = [(anchors @ bank_rows(memory, block.reshape(-1), anchors.dtype).T).view(anchors.shape[0], *block.shape)
              for block in idx.split(per_block, dim=0)]
    return torch.cat(blocks, dim=1)


@torch.no_grad()
def row_stats(memory, y, idx, path):
    """RowStats of bank memory [N, D] for anchors y [B] and sampled rows idx [B, K+1], in compute_dtype(memory)."""
    sums, squares = row_sums_and_squares(memory)
    anchors = bank_rows(memory, y, compute_dtype(memory))
    return RowStats(gram=anchor_gram(memory, anchors, idx, path), row_sum=sums[idx],
                    row_sq=squares[idx], anchor_sum=sums[y], anchor_sq=squares[y],
                    same=idx.unsqueeze(0) == y.view(-1, 1, 1))


def row_sums_and_squares(memory):
    """(coordinate sums [N], squared norms [N]) of the rows of memory [N, D], in compute_dtype(memory)."""
    dtype = compute_dtype(memory)
    if memory.dtype == dtype:
        return memory.sum(1), memory.pow(2).sum(1)
    sums, squares = [], []
    for _, block in upcast_row_blocks(memory, dtype):
        sums.append(block.sum(1))
        squares.append(block.pow(2).sum(1))
    return torch.cat(sums), torch.cat(squares)


@torch.no_grad()
def row_relation_terms(stats, dim):
    """(numerator part without v, 1 / max(|q|, 1e-12)), each [A, B, K+1], from RowStats of D=`dim` vectors."""
    e, shift = RELATION_SHIFT, RELATION_SHIFT ** 2 * dim
    per_anchor = (stats.anchor_sq - 2 * e * stats.anchor_sum).view(-1, 1, 1)
    numerator = stats.gram.neg().add_(e * stats.row_sum + shift).add_(per_anchor)
    torch.where(stats.same, (shift - e * stats.anchor_sum).view(-1, 1, 1), numerator, out=numerator)
    q_sq = stats.gram.mul(-2).add_(stats.row_sq + 2 * e * stats.row_sum + shift).add_(per_anchor)
    inv_q = q_sq.masked_fill_(stats.same, shift).clamp_min_(NORM_FLOOR ** 2).rsqrt_()
    return numerator, inv_q


def relation_logits(v, row_scores, anchor_scores, stats, temperature):
    """cos[a, b, k] / T of the module docstring -> [A, B, K+1] (in-place steps where autograd allows: CPU speed).

    v [B, D] embeddings (with gradient); row_scores [B, K+1] = <memory[idx[b, k]], v_b>;
    anchor_scores [B, A] = <memory[y_a], v_b>; stats: RowStats of the same bank before its update.
    """
    e, shift = RELATION_SHIFT, RELATION_SHIFT ** 2 * v.shape[1]
    v_sum = v.sum(1)
    r_sq = (v.pow(2).sum(1) - 2 * anchor_scores.T + 2 * e * v_sum + stats.anchor_sq.unsqueeze(1)
            - 2 * e * stats.anchor_sum.unsqueeze(1) + shift)
    inv_r_over_t = r_sq.clamp_min(NORM_FLOOR ** 2).rsqrt() / temperature
    const, inv_q = row_relation_terms(stats, v.shape[1])
    numerator = (row_scores.unsqueeze(0) - anchor_scores.T.unsqueeze(2)).masked_fill_(stats.same, 0)
    numerator.add_(const).add_(e * v_sum.view(1, -1, 1)).mul_(inv_q)
    return numerator * inv_r_over_t.unsqueeze(2)


class RelationMemory(ContrastMemory):
    """Unit-norm banks [outputSize, inputSize] scoring anchor relations (Zhu et al., CRCD, CVPR 2021).

    Reuses CRD's bank machinery (score paths, momentum update, Z from the first batch); the rows CRD draws
    are scaled to unit norm, as the CRCD code does.
    """

    def __init__(self, inputSize, outputSize, K, T=0.05, momentum=0.5, score_path="auto", memory_dtype="float32"):
        super().__init__(inputSize, outputSize, K, T, momentum, score_path, memory_dtype)

    def initial_bank(self, n_rows, dim):
        """CRD's uniform bank with unit rows, before it is cast to memory_dtype."""
        return normalise_rows_(super().initial_bank(n_rows, dim))

    def forward(self, v1, v2, y, idx=None):
        """v1, v2: unit embeddings [B, D] (student, teacher); y [B] dataset indices; idx [B, K+1], positive first.

        Returns (out_v1, out_v2), each [B*B, K+1, 1] (anchor-major): exp(cos / T) / Z with cos the relations of v1
        against memory_v2 (anchors memory_v2[y]) and of v2 against memory_v1; then both banks move toward v1, v2.
        """
        if idx is None:
            idx = sample_contrast_indices(y, self.memory_v1.shape[0], self.K)
        path = self.resolve_path(idx.shape[1] + y.shape[0])
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.to(compute_dtype(self.memory_v1)), v2.to(compute_dtype(self.memory_v2))
            rows, new_v1, new_v2 = rows_of_all_ranks(y, v1, v2)
            exp_v1 = self.relations_then_update(self.memory_v2, v1, y, idx, v2, path, (rows, new_v2)).exp_()
            exp_v2 = self.relations_then_update(self.memory_v1, v2, y, idx, v1, path, (rows, new_v1)).exp_()
            z = self.normalisers(exp_v1, exp_v2)
            return (exp_v1 / z[0]).flatten(0, 1).unsqueeze(2), (exp_v2 / z[1]).flatten(0, 1).unsqueeze(2)

    def relations_then_update(self, memory, v, y, idx, value, path, update=None):
        """Logits cos / T [B, B, K+1] of v [B, D] against memory before its update, then memory[y] toward value.

        update: (rows [M], values [M, D]) to move instead of (y, value) (all ranks' rows under DDP)."""
        stats = row_stats(memory, y, idx, path)
        width = idx.shape[1]
        rows_and_anchors = torch.cat([idx, y.expand(y.shape[0], -1)], dim=1)
        rows, values = update if update is not None else (y, value)
        scores = self.scores_then_update(memory, v, rows_and_anchors, rows, values, path)
        return relation_logits(v, scores[:, :width], scores[:, width:], stats, self.T)
