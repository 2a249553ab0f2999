"""The shared epoch loop: one training loop for teachers, students and init stages, and validation.

The loop knows nothing about methods: a `compute(batch) -> (logits, {term: loss})` closure
produces named loss terms, `weights(epoch, iteration) -> {term: weight}` weights them, and the
loop backpropagates once, keeps one meter per term, and stops on a non-finite loss.
"""
from collections import defaultdict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from distiller_zoo.base import Batch, ModelOutput
from helper import distributed, fast
from helper.errors import NonFiniteLossError
from helper.util import AverageMeter, accuracy


def forward_model(model, images, needs):
    """Run `model` as the method needs: features (RepDistiller's is_feat/preact) or logits only."""
    if needs.feats or needs.preact:
        feats, logits = model(images, is_feat=True, preact=needs.preact)
        return ModelOutput(logits=logits, feats=feats)
    return ModelOutput(logits=model(images))


def weighted_sum(terms, weights):
    """sum_k weights[k] * terms[k], skipping zero weights; every term must have a weight."""
    total = None
    for name, value in terms.items():
        w = weights[name]
        if w == 0:
            continue
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("every loss term has weight 0: nothing to train (check -r/-a/-b)")
    return total


class LossStep(torch.nn.Module):
    """The trainable modules of one training step, held together so that one DistributedDataParallel wraps them.

    forward(batch, step_weights) runs `compute(batch)` -> (logits, terms), with the networks called inside as
    plain modules (e.g. `student(x, is_feat=True)`), and returns (loss, logits, terms) where only the
    weighted loss keeps its graph: DDP then looks for unused parameters from the loss actually
    backpropagated (a term skipped for its zero weight leaves its modules unused, not half-reduced).
    `modules` (the student, the method's trainable modules, the CTKD temperature; None entries are
    ignored) are only registered here; the teacher stays outside (it has no trainable parameter).
    """

    def __init__(self, compute, modules):
        super().__init__()
        self.parts = torch.nn.ModuleList([m for m in modules if m is not None])
        self.compute = compute

    def forward(self, batch, step_weights):
        logits, terms = self.compute(batch)
        loss = weighted_sum(terms, step_weights)
        logits = logits.detach() if logits is not None else None
        return loss, logits, {name: value.detach() for name, value in terms.items()}


def run_step(compute, batch, step_weights):
    """(loss, logits, terms) of one batch: a (DDP-wrapped) LossStep, or compute(batch) and the weighted sum."""
    if isinstance(compute, (LossStep, torch.nn.parallel.DistributedDataParallel)):
        return compute(batch, step_weights)
    logits, terms = compute(batch)
    return weighted_sum(terms, step_weights), logits, terms


def _check_finite(loss_sum, meters, epoch, iteration):
    """Raise NonFiniteLossError if the accumulated loss is NaN/inf (one host sync, at print points only)."""
    if torch.is_tensor(loss_sum) and not torch.isfinite(loss_sum).item():
        terms = ", ".join(f"{k}={m.avg:.4g}" for k, m in meters.items() if k.startswith("loss_"))
        raise NonFiniteLossError(
            f"loss became non-finite in epoch {epoch} by iteration {iteration} ({terms}); stopping, "
            "the last good checkpoint is kept")


def train_epoch(epoch, loader, compute, optimizer, weights, opt, train_modules, eval_modules=(),
                desc="train"):
    """Train one epoch and return {'loss', 'acc1', 'acc5', 'loss_<term>'...} averages.

    compute(batch) -> (logits [B, C] or None, {term: scalar tensor}), or a (DDP-wrapped) LossStep around
    such a function; weights(epoch, iteration in the epoch, iterations per epoch) -> {term: float}.
    `eval_modules` are put in eval mode, then `train_modules` in train mode (so a train module nested in an
    eval one, like RepDistiller's init-stage feature modules, trains). Under torchrun the returned averages
    are over all ranks' samples (sums and counts reduced).
    """
    for module in eval_modules:
        module.eval()
    for module in train_modules:
        module.train()
    device = opt.device
    meters = defaultdict(AverageMeter)
    print_freq = max(int(getattr(opt, "print_freq", 100)), 1)
    n_iter = len(loader)
    bar = tqdm(loader, desc=f"{desc} {epoch}", leave=False, disable=getattr(opt, "no_progress", None))
    for i, items in enumerate(bar):
        batch = Batch.from_loader(items, device)
        batch.epoch = epoch
        n = batch.targets.shape[0]
        optimizer.zero_grad(set_to_none=True)  # before the step: no stale grads alive across CUDA-graph steps
        loss, logits, terms = run_step(compute, batch, weights(epoch, i, n_iter))
        loss.backward()
        optimizer.step()

        meters["loss"].update(loss, n)
        for name, value in terms.items():
            meters[f"loss_{name}"].update(value, n)
        if logits is not None:
            acc1, acc5 = accuracy(logits.detach(), batch.targets, topk=(1, 5))
            meters["acc1"].update(acc1, n)
            meters["acc5"].update(acc5, n)
        if (i + 1) % print_freq == 0 or i + 1 == n_iter:
            _check_finite(meters["loss"].sum, meters, epoch, i + 1)
            bar.set_postfix(loss=f"{meters['loss'].avg:.4f}",
                            acc1=f"{meters['acc1'].avg:.2f}" if "acc1" in meters else "-")
    if n_iter == 0:
        raise ValueError("the training loader is empty (dataset smaller than one batch with drop_last?)")
    return distributed.reduce_meters(meters, device)


def train_vanilla(epoch, train_loader, model, criterion, optimizer, opt):
    """RepDistiller's train_vanilla: one epoch of cross-entropy training; returns (top1, loss)."""
    def compute(batch):
        logits = model(batch.images)
        return logits, {"cls": criterion(logits, batch.targets)}

    stats = train_epoch(epoch, train_loader, compute, optimizer, lambda *step: {"cls": 1.0}, opt, [model])
    return stats["acc1"], stats["loss"]


@torch.no_grad()
def validate(val_loader, model, criterion, opt):
    """Top-1, top-5 (percent) and mean loss over the whole loader; sums reduced across ranks under DDP."""
    model.eval()
    forward = fast.wrap_step(model.__call__, opt)  # --cuda_graphs: a graph step per batch, not chained recordings
    device = opt.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for items in tqdm(val_loader, desc="val", leave=False, disable=getattr(opt, "no_progress", None)):
        images, targets = items[0].to(device, non_blocking=True), items[1].to(device, non_blocking=True)
        logits = forward(images)
        n = targets.shape[0]
        acc1, acc5 = accuracy(logits, targets, topk=(1, 5))
        loss = criterion(logits.float(), targets)
        totals[:3] += torch.stack([acc1 * n / 100, acc5 * n / 100, loss * n]).to(totals.dtype)
        totals[3] += n  # a scalar argument: no host-to-device copy
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    correct1, correct5, loss_sum, count = totals.tolist()
    count = max(count, 1.0)
    return 100.0 * correct1 / count, 100.0 * correct5 / count, loss_sum / count


def cross_entropy(logits, targets):
    """Classification term, computed in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), targets)
