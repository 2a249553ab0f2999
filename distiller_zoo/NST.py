"""NST: match neuron selectivity distributions with a squared-MMD under a degree-2 polynomial kernel."""
import torch.nn.functional as F
from torch import nn

from .AT import pool_to_common_height
from .base import Distiller, Needs, register_distiller


class NSTLoss(nn.Module):
    """Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang and Wang, arXiv 2017)."""

    def forward(self, g_s, g_t):
        """One loss per pair of maps [B, C_s, H, W] / [B, C_t, H', W'] (pairs zipped)."""
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def nst_loss(self, f_s, f_t):
        """MMD^2 between channel distributions; the teacher-teacher term is detached, as in RepDistiller."""
        f_s, f_t = pool_to_common_height(f_s, f_t)
        f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
        f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return (self.poly_kernel(f_t, f_t).mean().detach() + self.poly_kernel(f_s, f_s).mean()
                - 2 * self.poly_kernel(f_s, f_t).mean())

    def poly_kernel(self, a, b):
        """Squared inner products of every channel of `b` with every channel of `a`: [B, C_a, N], [B, C_b, N] -> [B, C_b, C_a]."""
        return b.bmm(a.transpose(1, 2)).pow(2)


@register_distiller("nst")
class NSTDistiller(Distiller):
    """Sum of NST losses over the stage outputs (RepDistiller's feat[1:-1])."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = NSTLoss()

    def loss(self, out_s, out_t, batch, ctx):
        return {"nst": sum(self.criterion(out_s.stage_feats, out_t.stage_feats))}
