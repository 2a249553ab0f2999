"""AT: match normalised spatial attention maps of every stage."""
import torch.nn.functional as F
from torch import nn

from .base import Distiller, Needs, register_distiller


def pool_to_common_height(f_s, f_t):
    """Average-pool the larger of two maps [B, C, H, W] to the other's height (square output, as in RepDistiller)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


class Attention(nn.Module):
    """Paying More Attention to Attention (Zagoruyko and Komodakis, ICLR 2017)."""

    def __init__(self, p=2):
        super().__init__()
        self.p = p

    def forward(self, g_s, g_t):
        """One loss per pair of maps [B, C_s, H, W] / [B, C_t, H', W'] (pairs zipped, extra maps ignored)."""
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s, f_t):
        """Mean squared difference of the two attention maps after pooling to a common size."""
        f_s, f_t = pool_to_common_height(f_s, f_t)
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f):
        """Channel mean of f^p, flattened and L2-normalised: [B, C, H, W] -> [B, H*W]."""
        return F.normalize(f.pow(self.p).mean(1).view(f.size(0), -1))


@register_distiller("attention")
class AttentionDistiller(Distiller):
    """Sum of AT losses over the stage outputs (RepDistiller's feat[1:-1])."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = Attention()

    def loss(self, out_s, out_t, batch, ctx):
        return {"attention": sum(self.criterion(out_s.stage_feats, out_t.stage_feats))}
