"""One training step: the per-batch computation of a trainee (a teacher's, a student's, an init stage's), its
weighted parts, and the module DDP wraps. A step reads top to bottom: forward, the method's terms, the weights."""
import torch

from distiller_zoo.base import ModelOutput
from distiller_zoo.KD import DistillKL
from helper.engine.loop import cross_entropy, forward_model
from helper.engine.weights import is_task_term


def weighted_parts(terms, weights):
    """(task, distill): sum_k weights[k] * terms[k] over the classification terms and over the others, skipping
    zero weights; a part with no term is None. Every term must have a weight."""
    parts = {True: None, False: None}
    for name, value in terms.items():
        w = weights[name]
        if w == 0:
            continue
        task = is_task_term(name)
        parts[task] = w * value if parts[task] is None else parts[task] + w * value
    if parts[True] is None and parts[False] is None:
        raise ValueError("every loss term has weight 0: nothing to train (check -r/-a/-b)")
    return parts[True], parts[False]


class LossStep(torch.nn.Module):
    """The trainable modules of one training step, held together so that one DistributedDataParallel wraps them.

    forward(batch, step_weights, *args) runs `compute(batch, *args)` -> (logits, terms), with the networks called
    inside as plain modules, and returns (task, distill, logits, terms) where only the weighted parts keep their
    graph: DDP then looks for unused parameters from the loss actually backpropagated. `modules` (the student, the
    method's trainable modules, the plug-ins' modules; None entries are ignored) are only registered here; the
    teacher stays outside (it has no trainable parameter).
    """

    def __init__(self, compute, modules):
        super().__init__()
        self.parts = torch.nn.ModuleList([m for m in modules if m is not None])
        self.compute = compute

    def forward(self, batch, step_weights, *args):
        logits, terms = self.compute(batch, *args)
        task, distill = weighted_parts(terms, step_weights)
        logits = logits.detach() if logits is not None else None
        return task, distill, logits, {name: value.detach() for name, value in terms.items()}


def run_step(compute, batch, step_weights, *args):
    """(task, distill, logits, terms) of one batch: a (DDP-wrapped) LossStep, or compute and the weighted parts."""
    if isinstance(compute, (LossStep, torch.nn.parallel.DistributedDataParallel)):
        return compute(batch, step_weights, *args)
    logits, terms = compute(batch, *args)
    return (*weighted_parts(terms, step_weights), logits, terms)



class ClassifierStep:
    """A network trained from scratch (a teacher): (logits, {"cls": CE})."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch, teachers, ctx):
        logits = self.model(batch.images)
        return logits, {"cls": cross_entropy(logits, batch.targets)}


class DistillStep:
    """A student's step in the main stage: (student logits, {term: loss}).

    The student runs as its method needs; the teacher's outputs come from the shared TeacherOutputs; plug-ins set
    the step's temperature and logit transforms; then "cls" (CE), "div" (KL_T, when -a is not 0) and the method's
    own terms, unweighted.
    """

    def __init__(self, student, distiller, plugins, kd_T, alpha):
        self.student, self.distiller, self.plugins = student, distiller, list(plugins)
        self.kd_T, self.alpha = kd_T, alpha
        self.criterion_div = DistillKL(kd_T)

    def __call__(self, batch, teachers, ctx):
        needs = self.distiller.needs
        out_s = forward_model(self.student, batch.images, needs)
        if needs.strong_view:
            out_s.strong = ModelOutput(logits=self.student(batch.images_strong))
        out_t = teachers.get(needs)
        for plugin in self.plugins:
            plugin.prepare(ctx, out_s, out_t)
        terms = {"cls": cross_entropy(out_s.logits, batch.targets)}
        if self.alpha != 0:
            z_s, z_t = ctx.distill_logits(out_s.logits.float()), ctx.distill_logits(out_t.logits.float())
            terms["div"] = self.criterion_div(z_s, z_t, ctx.temp(self.kd_T)).sum()
        terms.update(self.distiller.loss(out_s, out_t, batch, ctx))
        return out_s.logits, terms


class InitStep:
    """A student's init stage (AB, FT, FSP): (None, {"init": the method's init loss})."""

    def __init__(self, student, distiller):
        self.student, self.distiller = student, distiller

    def __call__(self, batch, teachers, ctx):
        needs = self.distiller.needs
        out_s = forward_model(self.student, batch.images, needs)
        return None, {"init": self.distiller.init_loss(out_s, teachers.get(needs), batch, ctx)}
