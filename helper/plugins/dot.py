"""DOT as a plug-in (Zhao et al., ICCV 2023): --dot [--dot_delta 0.075], for every method.

The student's SGD becomes helper.dot.DistillationOrientedTrainer with momentum (--momentum - delta) for the task
terms' gradients and (--momentum + delta) for the distillation terms', as mdistiller's DOT trainer builds it. Each
step backpropagates the distillation terms (-a KL and the method's terms, retaining the graph), records their
gradients (`step_kd`), then backpropagates the task terms (-r CE) and steps. Not under torchrun (DDP reduces one
backward pass per forward) nor with --amp fp16 (the gradient scaler scales one loss).
"""
from helper.dot import DistillationOrientedTrainer
from helper.errors import UserError

from . import Plugin, register_plugin


@register_plugin("dot")
class DistillationOriented(Plugin):
    """Two momenta: one per kind of loss term."""
    kind = "optimizer"
    switch = "--dot"

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
