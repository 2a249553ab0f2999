"""DOT: SGD with one momentum for the task loss's gradients and a larger one for the distillation loss's.

Usage, as mdistiller's DOT trainer: backward the distillation loss (retain_graph=True), `step_kd()` records its
gradients, zero the gradients, backward the task loss, then `step()` updates the parameters from both.

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
