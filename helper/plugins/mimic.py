"""CRCD's loss-weight schedule as a plug-in (Zhu et al., CVPR 2021): --mimic_schedule, for every method.

CRCD multiplies the distillation terms (KD and the method's own term) by a "mimic" weight and the cross-entropy by a
"task" weight, both set by `adjust_mimic_loss_weight(cur_iter, total_iter)` with cur_iter = (epoch - 1) *
iterations_per_epoch + idx (0-based) and total_iter = epochs * iterations_per_epoch; here as pure functions of
training progress. Its `exp_increase` branch never sets the task weight (an UnboundLocalError at the return); every
other branch that leaves the cross-entropy alone sets it to 1, so 1 is used here. (Its training loop also tests
whether the method "equals 'crd' or 'crcd'" with Python's `or`, which is always true, and hard-codes the '240'
schedule: weight 1, then 0 for the last 1/25 of iterations, i.e. 10 fine-tuning epochs out of 250.)
"""
from helper.errors import UserError

from . import Plugin, register_plugin

MIMIC_SCHEDULES = ("constant", "240", "linear_decrease", "linear_decrease2", "exp_increase")


EXP_ALPHA, EXP_FACTOR = 1, 2  # CRCD's defaults for exp_increase, never overridden there


def _linear_mimic(iteration, total_iterations):
    """1 for the first third, then 2 - iteration / third down to 0 at two thirds, then 0."""
    third = total_iterations / 3
    if iteration < third:
        return 1.0
    if iteration < third * 2:
        return 2.0 - iteration / third
    return 0.0


def _weights(name, iteration, total_iterations):
    """(task weight, mimic weight) of CRCD's schedule `name` at a 0-based iteration."""
    if name == "constant":
        return 1.0, 1.0
    if name == "240":
        return 1.0, 1.0 if iteration < total_iterations * 24.0 / 25 else 0.0
    if name == "linear_decrease":
        mimic = _linear_mimic(iteration, total_iterations)
        return 1.0 - mimic, mimic
    if name == "linear_decrease2":
        return 1.0, _linear_mimic(iteration, total_iterations)
    if name == "exp_increase":
        return 1.0, float(EXP_ALPHA * EXP_FACTOR ** (iteration // (total_iterations / 3)))
    raise UserError(f"unknown --mimic_schedule {name!r}; choose one of: {', '.join(MIMIC_SCHEDULES)}")


def mimic_weight(name, iteration, total_iterations):
    """CRCD's multiplier of the distillation terms at a 0-based `iteration` out of `total_iterations`."""
    return _weights(name, iteration, total_iterations)[1]


def task_weight(name, iteration, total_iterations):
    """CRCD's multiplier of the cross-entropy (only linear_decrease changes it: 1 - mimic weight)."""
    return _weights(name, iteration, total_iterations)[0]


@register_plugin("mimic")
class MimicSchedule(Plugin):
    """Multiplies the distillation terms by CRCD's mimic weight and the task terms by its task weight, as pure
    functions of (iteration, total iterations) with iteration = (epoch - 1) * iterations per epoch + index."""
    kind = "weights"
    switch = "--mimic_schedule"
    tag_flags = frozenset({"mimic_schedule"})

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--mimic_schedule", type=str, default="constant", choices=MIMIC_SCHEDULES,
                            help="CRCD's adjust_mimic_loss_weight on every distillation term (constant)")

    @classmethod
    def tag(cls, opt):
        return f"mimic:{opt.mimic_schedule}"

    @classmethod
    def enabled(cls, opt):
        return getattr(opt, "mimic_schedule", "constant") != "constant"

    def weight_multipliers(self, epoch, iteration, iters_per_epoch):
        step = (epoch - 1) * iters_per_epoch + iteration
        total = self.opt.epochs * iters_per_epoch
        name = self.opt.mimic_schedule
        return {"task": task_weight(name, step, total), "distill": mimic_weight(name, step, total)}
