"""FSP: match the Gram matrices between consecutive feature maps ("flow of solution procedure") in an init stage."""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller, require_method


def check_fsp_shapes(s_shapes, t_shapes):
    """UserError unless student and teacher give as many maps, with equal channel counts position by position."""
    if len(s_shapes) != len(t_shapes):
        raise UserError(f"FSP needs as many student as teacher feature maps, got {len(s_shapes)} and {len(t_shapes)}")
    mismatches = [f"feats[{i}] {s[1]} vs {t[1]}" for i, (s, t) in enumerate(zip(s_shapes, t_shapes)) if s[1] != t[1]]
    if mismatches:
        raise UserError("FSP needs equal student/teacher channel counts at every feature map; they differ at "
                        + ", ".join(mismatches) + " (student vs teacher)")


class FSP(nn.Module):
    """A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning
    (Yim et al., CVPR 2017)."""

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        check_fsp_shapes(s_shapes, t_shapes)

    def forward(self, g_s, g_t):
        """One loss per consecutive pair of maps: lists of [B, C_i, H_i, W_i] with equal C_i on both sides."""
        s_fsp = self.compute_fsp(g_s)
        t_fsp = self.compute_fsp(g_t)
        return [self.compute_loss(s, t) for s, t in zip(s_fsp, t_fsp)]

    @staticmethod
    def compute_loss(s, t):
        """Mean squared difference of two FSP matrices."""
        return (s - t).pow(2).mean()

    @staticmethod
    def compute_fsp(g):
        """FSP matrices [B, C_{i+1}, C_i]: spatial mean of the channel products of maps i and i+1, the larger map
        first average-pooled to the smaller (square) size."""
        fsp_list = []
        for bot, top in zip(g[:-1], g[1:]):
            b_h, t_h = bot.shape[2], top.shape[2]
            if b_h > t_h:
                bot = F.adaptive_avg_pool2d(bot, (t_h, t_h))
            elif b_h < t_h:
                top = F.adaptive_avg_pool2d(top, (b_h, b_h))
            bot = bot.flatten(2)
            top = top.flatten(2)
            fsp_list.append(torch.einsum("bih,bjh->bij", top, bot) / bot.shape[2])
        return fsp_list


@register_distiller("fsp")
class FSPDistiller(Distiller):
    """FSP as RepDistiller runs it: the init stage trains the student's feature modules on the summed FSP losses
    over the stem and stage outputs (feat[:-1]); distillation then adds no term of its own (only CE and KD)."""

    needs = Needs(feats=True, init_stage=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        require_method(student, "get_feat_modules", "fsp", "student")
        s_shapes = [f.shape for f in probe.out_s.all_but_pooled]
        t_shapes = [f.shape for f in probe.out_t.all_but_pooled]
        self.criterion = FSP(s_shapes, t_shapes)

    def loss(self, out_s, out_t, batch, ctx):
        return {}

    def init_modules(self, student):
        return [student.get_feat_modules()]

    def init_loss(self, out_s, out_t, batch, ctx):
        return sum(self.criterion(out_s.all_but_pooled, out_t.all_but_pooled))
