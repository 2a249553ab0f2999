"""The shared epoch loop: one pass over the data trains every trainee of the process (one network, or a group of
students sharing one teacher pass), and validation.

The loop knows nothing about methods: each trainee's `compute(batch, teachers, ctx) -> (logits, {term: loss})`
produces named loss terms, its weights weight them, and the trainee backpropagates once (helper.engine.trainee.Trainee).
The augmented batch is made once per step and the teacher runs once per distinct need of the active trainees.
"""
import logging
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from distiller_zoo.base import Batch, ModelOutput, Needs
from helper.engine import fast
from helper.engine.preemption import StepStop
from helper.engine.meters import accuracy

log = logging.getLogger("kd")


def forward_model(model, images, needs):
    """Run `model` as the method needs: features (RepDistiller's is_feat/preact) or logits only."""
    if needs.feats or needs.preact:
        feats, logits = model(images, is_feat=True, preact=needs.preact)
        return ModelOutput(logits=logits, feats=feats)
    return ModelOutput(logits=model(images))


class TeacherOutputs:
    """The frozen teacher's outputs on one batch, computed on first request and shared by every student.

    One forward per distinct need: features without or with pre-activations; a logits-only need is served by a
    feature forward of the same batch when one was asked for (the same computation), so a group of KD and a
    feature method runs the teacher once. The strong view (Needs.strong_view) gets its own logits-only forward.
    """

    def __init__(self, teacher, batch, needs_list=()):
        self.teacher, self.batch = teacher, batch
        self.cache = {}
        teacher_needs = [n.teacher_needs for n in needs_list]
        self.feature_forward = any(n.feats and not n.preact for n in teacher_needs)

    def get(self, needs):
        """ModelOutput for a student's `needs` (the teacher side: needs.teacher_needs), with .strong if asked."""
        t_needs = needs.teacher_needs
        if t_needs.preact:
            key = "preact"
        elif t_needs.feats or self.feature_forward:
            key = "feats"
        else:
            key = "logits"
        out = self._forward(key, self.batch.images)
        if needs.strong_view:
            out = ModelOutput(logits=out.logits, feats=out.feats, strong=self._forward("strong", self.batch.images_strong))
        return out

    def _forward(self, key, images):
        if key not in self.cache:
            needs = {"preact": Needs(feats=True, preact=True), "feats": Needs(feats=True)}.get(key, Needs())
            with torch.no_grad():
                self.cache[key] = forward_model(self.teacher, images, needs)
        return self.cache[key]


def train_epoch(epoch, loader, trainees, device, teacher=None, desc="train", no_progress=None, stop=None):
    """One pass over `loader` training every trainee that is active in `epoch`; returns the wall time in seconds.

    Each batch is moved to `device` once; each active trainee steps on it (trainee.step(batch, teachers, i));
    `teachers` holds the frozen teacher's outputs, computed once per distinct need. A trainee that fails (a
    non-finite loss) stops stepping; the others go on. A trainee resumed from a step checkpoint steps from its
    `first_step` on: the batches before it are drawn (the data stream replays exactly) but not trained on. When
    `stop` (helper.engine.preemption.StopRequest) asks for it, the loop raises StepStop after a step that is not the
    epoch's last (the epoch's end has its own checkpoint).
    """
    active = [t for t in trainees if t.active(epoch)]
    iters = len(loader)
    if iters == 0:
        raise ValueError("the training loader is empty (dataset smaller than one batch?)")
    for trainee in active:
        trainee.begin_epoch(epoch, loader)
    start = time.time()
    for i, items in enumerate(tqdm(loader, desc=f"{desc} {epoch}", leave=False, disable=no_progress)):
        stepping = [t for t in active if i >= t.first_step]
        if stepping:
            batch = Batch.from_loader(items, device)
            teachers = TeacherOutputs(teacher, batch, [t.needs for t in stepping]) if teacher is not None else None
            for trainee in stepping:
                trainee.step(batch, teachers, i)
        active = [t for t in active if not t.failed]
        if not active:
            break
        if stop is not None and i + 1 < iters:
            signum = stop.requested()
            if signum:
                raise StepStop(epoch, i + 1, time.time() - start, signum)
    return time.time() - start


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
    """Classification term, computed in float32 at least whatever the autocast dtype (float64 stays float64)."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)
