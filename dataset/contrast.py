"""Vectorised CRD contrast sampling: one positive and K negatives per sample, for a whole batch at once.

A row of `ContrastSampler.sample` is `[positive, neg_1, ..., neg_K]` (dataset indices). Negatives are
drawn uniformly *without* replacement from the samples of the other classes (with replacement only
when K exceeds a class's negative pool, as RepDistiller does). Two exact methods, chosen once from
the pool sizes:

* random keys: one float64 key per pool element, keep the K largest. Cost O(B * P) time and memory
  (P = pool size); the cheaper choice when K is a sizeable fraction of P (CIFAR-100: P = 49,500,
  K = 16,384 -> ~30 ms per 64 samples on one CPU core).
* first-K-distinct: i.i.d. uniform draws, keeping the first K distinct values of each row (the same
  law as sequential sampling without replacement), redrawing the rare rows that saw fewer than K.
  Cost O(B * m log m) with m ~ P * ln(P / (P - K)) draws, independent of P when K << P (ImageNet).

Memory: O(N) for the class-sorted index, plus a [C, P * percent] table only when percent < 1.
"""
import logging
import math

import numpy as np
import torch
from torch.utils.data import default_collate

from helper.errors import UserError

MODES = ('exact', 'relax')
log = logging.getLogger("kd")
_DRAW_MARGIN = 1.1  # draws per row = margin * expected draws (+ a constant); short rows are redrawn
_KEYS_COST_RATIO = 3  # use random keys unless the pool is this many times larger than the draws needed


class ContrastSampler:
    """Per-class tables built from training labels; `sample` maps a batch to contrast indices [B, K+1]."""

    def __init__(self, labels, k, mode='exact', percent=1.0, seed=0):
        """labels: [N] class of each training sample; k: negatives per row; mode: 'exact' | 'relax';
        percent in (0, 1]: fraction of each class's negative pool kept (a fixed random subset, from seed)."""
        if mode not in MODES:
            raise UserError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
        if not 0 < percent <= 1:
            raise UserError(f'--percent must be in (0, 1], got {percent}')
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.k = int(k)
        self.mode = mode
        num_classes = int(labels.max()) + 1
        self.class_count = torch.bincount(labels, minlength=num_classes)  # [C]
        self.class_start = torch.cumsum(self.class_count, 0) - self.class_count  # [C]
        self.by_class = torch.argsort(labels, stable=True)  # [N] indices grouped by class
        pool_size = len(labels) - self.class_count  # [C]
        if int(pool_size.min()) == 0:
            raise UserError(f'contrastive distillation draws negatives from other classes, but the training set '
                            f'({len(labels)} samples) holds a single class; train on at least two classes (--subset 2 '
                            'or more)')
        self.negative_table = None
        if percent < 1:
            pool_size = torch.clamp((pool_size * percent).long(), min=1)
            self.negative_table = self._subsample_pools(pool_size, seed)  # [C, max pool]
        self.pool_size = pool_size
        if self.k > int(pool_size.min()):
            log.warning("--nce_k %d is larger than the %d negatives available to the smallest class: rows of such "
                        "classes draw their negatives with replacement (repeats); lower --nce_k to avoid it",
                        self.k, int(pool_size.min()))
        self._min_pool, self._max_pool = int(pool_size.min()), int(pool_size.max())  # host ints: no device reads
        self._method = _choose_method(self._min_pool, self._max_pool, self.k)
        self._draws = _draws_needed(self._min_pool, self.k)

    @property
    def device(self):
        return self.by_class.device

    def to(self, device):
        """Moves the tables to `device` (in place); returns self."""
        for name in ('class_count', 'class_start', 'by_class', 'pool_size', 'negative_table'):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def sample(self, targets, index, generator=None):
        """targets, index: [B] int -> contrast_idx [B, K+1] int64 on self.device, positive in column 0.

        exact: positive = index; relax: a uniformly random sample of the same class.
        generator: a torch.Generator on self.device, or None for the global RNG."""
        targets = torch.as_tensor(targets, dtype=torch.int64).to(self.device)
        index = torch.as_tensor(index, dtype=torch.int64).to(self.device)
        positions = self._negative_positions(self.pool_size[targets], generator)  # [B, K]
        negatives = self._negatives_at(targets, positions)
        positive = index if self.mode == 'exact' else self._random_same_class(targets, generator)
        return torch.cat([positive[:, None], negatives], dim=1)

    def _subsample_pools(self, pool_size, seed):
        """A random `pool_size[c]`-subset of each class's negatives, padded with -1: [C, max pool]."""
        generator = torch.Generator().manual_seed(seed)
        table = torch.full((len(pool_size), int(pool_size.max())), -1, dtype=torch.int64)
        for c, size in enumerate(pool_size.tolist()):
            start, end = int(self.class_start[c]), int(self.class_start[c] + self.class_count[c])
            pool = torch.cat([self.by_class[:start], self.by_class[end:]])
            table[c, :size] = pool[torch.randperm(len(pool), generator=generator)[:size]]
        return table

    def _negative_positions(self, pool, generator):
        """pool: [B] pool sizes -> [B, K] positions in [0, pool) (distinct per row when pool >= K)."""
        if self._min_pool >= self.k:  # every pool holds K distinct negatives (CIFAR, ImageNet)
            return self._distinct_positions(pool, generator)
        positions = _uniform_below(pool[:, None].expand(-1, self.k), generator)
        if self._max_pool >= self.k:  # mixed pool sizes: only some rows can be drawn without replacement
            small = pool < self.k
            positions[~small] = self._distinct_positions(pool[~small], generator)
        return positions

    def _distinct_positions(self, pool, generator):
        if self._method == 'keys':
            return _distinct_by_keys(pool, self.k, generator, self._max_pool)
        return _distinct_by_first_draws(pool, self.k, self._draws, generator)

    def _negatives_at(self, targets, positions):
        """Position j in class c's negative pool -> dataset index: [B, K]."""
        if self.negative_table is not None:
            return self.negative_table[targets[:, None], positions]
        start = self.class_start[targets][:, None]
        skip_own_class = (positions >= start) * self.class_count[targets][:, None]
        return self.by_class[positions + skip_own_class]

    def _random_same_class(self, targets, generator):
        offset = _uniform_below(self.class_count[targets], generator)
        return self.by_class[self.class_start[targets] + offset]


class ContrastCollate:
    """collate_fn for (img, target, index) items: appends sampler.sample(...) as a 4th batch element.

    Runs in DataLoader workers with their (per-worker seeded) global torch RNG."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, items):
        images, targets, index = default_collate(items)
        return images, targets, index, self.sampler.sample(targets, index)


def _choose_method(min_pool, max_pool, k):
    if k >= min_pool or max_pool <= _KEYS_COST_RATIO * _draws_needed(min_pool, k):
        return 'keys'
    return 'first_draws'


def _draws_needed(pool, k):
    """Draws per row giving K distinct values out of `pool` with high probability (0 if pool < K)."""
    if k >= pool:
        return 0
    expected = pool * math.log(pool / (pool - k))
    return int(_DRAW_MARGIN * expected) + 64


def _uniform_below(high, generator):
    """Independent uniform integers in [0, high) for an int64 tensor `high` (bias < high / 2**62)."""
    raw = torch.randint(0, 2 ** 62, high.shape, generator=generator, device=high.device)
    return raw % high


def _distinct_by_keys(pool, k, generator, width):
    """[R] pool sizes (all <= width) -> [R, K] distinct positions: top-K of float64 random keys, -1 past each pool."""
    keys = torch.rand(len(pool), width, dtype=torch.float64, generator=generator, device=pool.device)
    keys.masked_fill_(torch.arange(width, device=pool.device) >= pool[:, None], -1.0)
    return keys.topk(k, dim=1, sorted=False).indices


def _distinct_by_first_draws(pool, k, draws, generator):
    """[R] pool sizes -> [R, K]: the first K distinct values of `draws` i.i.d. uniform draws per row.

    Rows with fewer than K distinct values are redrawn with more draws; the set of the first K
    distinct values is independent of how many draws it took, so redrawing keeps the law exact."""
    out = torch.empty(len(pool), k, dtype=torch.int64, device=pool.device)
    todo = torch.arange(len(pool), device=pool.device)
    while len(todo):
        values = _uniform_below(pool[todo][:, None].expand(-1, draws), generator)  # [R, m]
        keep = _first_occurrences(values)
        keep &= keep.cumsum(dim=1) <= k
        complete = keep.sum(dim=1) == k
        out[todo[complete]] = values[complete][keep[complete]].view(-1, k)
        todo = todo[~complete]
        draws = draws * 2
    return out


def _first_occurrences(values):
    """[R, m] -> bool [R, m]: True where a value appears for the first time in its row."""
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    first_in_sorted = torch.ones_like(sorted_values, dtype=torch.bool)
    first_in_sorted[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    return torch.empty_like(first_in_sorted).scatter_(1, order, first_in_sorted)
