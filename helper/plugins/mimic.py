"""CRCD's loss-weight schedule as a plug-in (Zhu et al., CVPR 2021): --mimic_schedule, for every method."""
from helper.schedules import MIMIC_SCHEDULES, mimic_weight, task_weight

from . import Plugin, register_plugin


@register_plugin("mimic")
class MimicSchedule(Plugin):
    """Multiplies the distillation terms by CRCD's mimic weight and the task terms by its task weight, as pure
    functions of (iteration, total iterations) with iteration = (epoch - 1) * iterations per epoch + index."""
    kind = "weights"
    switch = "--mimic_schedule"

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
