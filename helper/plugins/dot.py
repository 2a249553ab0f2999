"""DOT as a plug-in (Zhao et al., ICCV 2023): --dot [--dot_delta 0.075], for every method.

The student's SGD becomes `DistillationOrientedTrainer` (below) with momentum (--momentum - delta) for the task
terms' gradients and (--momentum + delta) for the distillation terms', as mdistiller's DOT trainer builds it. Each
step backpropagates the distillation terms (-a KL and the method's terms, retaining the graph), records their
gradients (`step_kd`), then backpropagates the task terms (-r CE) and steps. Not under torchrun (DDP reduces one
backward pass per forward) nor with --amp fp16 (the gradient scaler scales one loss).

Differences from mdistiller's `mdistiller/engine/dot.py` (the default is the corrected behaviour; `faithful=True`
reproduces mdistiller's):
- mdistiller's `step_kd` keeps references to the `.grad` tensors, so anything that changes them in place before
  `step` (zero_grad(set_to_none=False), a backward accumulating into them, DDP's gradient bucket views) silently
  replaces the distillation gradient. By default `step_kd` stores a copy.
- mdistiller creates a KD-only parameter's KD momentum buffer from the raw gradient, so that parameter gets no
  weight decay on its first step (on later steps it does). By default the first step includes it too.
- mdistiller asserts a single parameter group; here each group is updated with its own hyper-parameters (with one
  group the update is unchanged).
"""
import torch
from torch.optim import Optimizer

from helper.errors import UserError

from . import Plugin, register_plugin


class DistillationOrientedTrainer(Optimizer):
    """DOT: A Distillation-Oriented Trainer (Zhao et al., ICCV 2023).

    Per parameter: the task gradient (plus weight decay) feeds `momentum_buffer`, the distillation gradient feeds
    `momentum_kd_buffer`, and the parameter moves by -lr times each buffer. A parameter with both gradients uses
    `momentum` for the task buffer and `momentum_kd` for the KD buffer; a parameter with one of them uses their mean
    for that buffer. Weight decay is added once: to the task gradient, or to the KD gradient of a KD-only
    parameter. A buffer starts as its first gradient (no dampening), as torch.optim.SGD's.
    """

    def __init__(self, params, lr, momentum=0, momentum_kd=0, dampening=0, weight_decay=0, *, faithful=False):
        for name, value in (("learning rate", lr), ("momentum", momentum), ("momentum_kd", momentum_kd),
                            ("weight_decay", weight_decay)):
            if value < 0.0:
                raise ValueError(f"Invalid {name}: {value}")
        defaults = dict(lr=lr, momentum=momentum, momentum_kd=momentum_kd, dampening=dampening,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.faithful = faithful
        self._kd_grads = []  # (param, KD gradient) pairs recorded by step_kd, consumed by step

    @torch.no_grad()
    def step_kd(self, closure=None):
        """Record the current gradients as the distillation gradients of the next `step`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._kd_grads = [(p, p.grad if self.faithful else p.grad.detach().clone())
                          for group in self.param_groups for p in group["params"] if p.grad is not None]
        return loss

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter from the current (task) gradients and the KD gradients recorded by step_kd."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kd_grads = {id(p): g for p, g in self._kd_grads}
        for group in self.param_groups:
            task = [(p, p.grad) for p in group["params"] if p.grad is not None]
            kd = [(p, kd_grads[id(p)]) for p in group["params"] if id(p) in kd_grads]
            self._update_group(group, task, kd)
        self._kd_grads = []
        return loss

    def _update_group(self, group, task, kd):
        lr, wd, dampening = group["lr"], group["weight_decay"], group["dampening"]
        momentum, momentum_kd = group["momentum"], group["momentum_kd"]
        shared_momentum = (momentum + momentum_kd) / 2.0
        has_task = {id(p) for p, _ in task}
        has_kd = {id(p) for p, _ in kd}
        for p, grad in task:
            d_p = grad.add(p, alpha=wd) if wd != 0 else grad
            state = self.state[p]
            if momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = d_p.detach().clone()
                else:
                    buf.mul_(momentum if id(p) in has_kd else shared_momentum).add_(d_p, alpha=1 - dampening)
                d_p = buf
                state["momentum_buffer"] = buf
            else:
                state.setdefault("momentum_buffer", None)
            p.add_(d_p, alpha=-lr)
        for p, grad in kd:
            kd_only = id(p) not in has_task
            state = self.state[p]
            buf = state.get("momentum_kd_buffer")
            if buf is None:
                if kd_only and wd != 0 and not self.faithful:
                    grad = grad.add(p, alpha=wd)
                buf = grad.detach().clone()
            elif kd_only:
                buf.mul_(shared_momentum).add_(grad.add(p, alpha=wd) if wd != 0 else grad, alpha=1 - dampening)
            else:
                buf.mul_(momentum_kd).add_(grad, alpha=1 - dampening)
            state["momentum_kd_buffer"] = buf
            p.add_(buf, alpha=-lr)


@register_plugin("dot")
class DistillationOriented(Plugin):
    """Two momenta: one per kind of loss term."""
    kind = "optimizer"
    switch = "--dot"
    tag_flags = frozenset({"dot"})

    @classmethod
    def add_args(cls, parser):
        p = parser.add_argument_group("DOT, distillation-oriented trainer (plug-in)")
        p.add_argument("--dot", action="store_true",
                       help="train with DOT's two momenta: --momentum - delta (task), + delta (distillation)")
        p.add_argument("--dot_delta", type=float, default=0.075, help="DOT's momentum gap delta (0.075, CIFAR)")
        p.add_argument("--dot_faithful", action="store_true",
                       help="mdistiller's DOT update (gradient references kept between step_kd and step; no weight "
                            "decay on a KD-only parameter's first step)")

    @classmethod
    def enabled(cls, opt):
        return bool(getattr(opt, "dot", False))

    @classmethod
    def check(cls, opt):
        if not 0 <= opt.dot_delta <= opt.momentum:
            raise UserError(f"--dot_delta must be in [0, --momentum {opt.momentum}], got {opt.dot_delta}")
        if getattr(opt, "world_size", 1) > 1:
            raise UserError("--dot backpropagates twice per step, which DDP does not support: run it on one process")
        if getattr(opt, "amp", "none") == "fp16":
            raise UserError("--dot with --amp fp16 is not supported (the gradient scaler scales one loss); use "
                            "--amp bf16 or none")

    def build_optimizer(self, param_groups, opt):
        return DistillationOrientedTrainer(param_groups, lr=opt.learning_rate, momentum=opt.momentum - opt.dot_delta,
                                           momentum_kd=opt.momentum + opt.dot_delta, weight_decay=opt.weight_decay,
                                           faithful=opt.dot_faithful)

    def backward_and_step(self, task_loss, distill_loss, optimizer):
        if distill_loss is not None:
            distill_loss.backward(retain_graph=task_loss is not None)
        optimizer.step_kd()
        optimizer.zero_grad(set_to_none=True)
        if task_loss is not None:
            task_loss.backward()
        optimizer.step()
        return True
