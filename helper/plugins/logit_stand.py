"""Logit standardisation as a plug-in (Sun et al., CVPR 2024): --logit_stand.

Every distillation term that consumes a logit transform (the KL term; DKD, MLKD, ...) standardises the student's
and the teacher's logits over the classes, z -> (z - mean) / (1e-7 + std), before dividing by its temperature.
The classification term keeps the raw logits. Compose with CTKD (--have_mlp 1): the learnable temperature then
divides standardised logits.
"""
from distiller_zoo.KD import normalize

from . import Plugin, register_plugin


@register_plugin("logit_stand")
class LogitStandardisation(Plugin):
    """Appends `distiller_zoo.KD.normalize` to each step's logit transforms."""
    kind = "logit_transform"
    switch = "--logit_stand"
    tag_flags = frozenset({"logit_stand"})

    @classmethod
    def add_args(cls, parser):
        parser.add_argument_group("logit standardisation (plug-in)").add_argument(
            "--logit_stand", action="store_true",
            help="standardise logits (z - mean) / std before every distillation temperature (Sun et al., CVPR 2024)")

    @classmethod
    def tag(cls, opt):
        return "ls"

    @classmethod
    def enabled(cls, opt):
        return bool(getattr(opt, "logit_stand", False))

    def prepare(self, ctx, out_s, out_t):
        ctx.logit_transforms = ctx.logit_transforms + (normalize,)
