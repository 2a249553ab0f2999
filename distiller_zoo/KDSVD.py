"""KDSVD: match RBF relations between the leading singular vectors of consecutive stages."""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


def _zero_non_finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _rbf(v, v_prev):
    """exp(-(v_i - w_j)^2 / 8) between every channel i of [B, C, k] and channel j of [B, C', k]: -> [B, C, C', k]."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8)


class KDSVD(nn.Module):
    """Self-supervised Knowledge Distillation Using Singular Value Decomposition (Lee, Kim and Song, ECCV 2018)."""

    def __init__(self, k=1):
        super().__init__()
        self.k = k

    def forward(self, g_s, g_t):
        """One loss per pair of consecutive stages (len(g_s) - 1 in all) for maps [B, C, H, W] whose student and
        teacher channel counts agree; each is the batch-averaged squared RBF difference, teacher RBF detached."""
        v_sb = v_tb = None
        losses = []
        for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
            _, s_t, v_t = self.svd(f_t, self.k)
            _, _, v_s = self.svd(f_s, self.k + 3)
            v_s, v_t = self.align_rsv(v_s, v_t)
            s_t = s_t.unsqueeze(1)
            v_t = v_t * s_t
            v_s = v_s * s_t
            if i > 0:
                l2loss = (_rbf(v_s, v_sb) - _rbf(v_t, v_tb).detach()).pow(2)
                losses.append(_zero_non_finite(l2loss).sum())
            v_tb, v_sb = v_t, v_s
        bsz = g_s[0].shape[0]
        return [loss / bsz for loss in losses]

    def svd(self, feat, n=1):
        """SVD of each sample's [H*W, C] matrix; with n > 0, the first n of U [B, HW, n], S [B, n], V [B, C, n],
        each L2-normalised along its non-component dimension. Non-finite entries are zeroed."""
        if feat.dim() != 4:
            raise ValueError(f"KDSVD expects [B, C, H, W] maps, got shape {list(feat.shape)}")
        x = feat.reshape(feat.shape[0], feat.shape[1], -1).transpose(-2, -1)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = (self.removenan(t) for t in (u, s, vh.transpose(-2, -1)))
        if n > 0:
            u = F.normalize(u[:, :, :n], dim=1)
            s = F.normalize(s[:, :n], dim=1)
            v = F.normalize(v[:, :, :n], dim=1)
        return u, s, v

    @staticmethod
    def removenan(x):
        """Replace NaN and +-inf by 0."""
        return _zero_non_finite(x)

    @staticmethod
    def align_rsv(a, b):
        """Map the singular vectors a [B, C, m] onto b [B, C, n]: for each column of b, take the column of `a`
        with the largest |cosine| (ties: the sum of them), signed to agree. Returns ([B, C, n], b)."""
        cosine = torch.matmul(a.transpose(-2, -1), b)
        max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
        mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
        return torch.matmul(a, mask), b


@register_distiller("kdsvd")
class KDSVDDistiller(Distiller):
    """Sum of KDSVD losses over the stage outputs (RepDistiller's feat[1:-1]); paired stages need equal channels."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        g_s = probe.out_s.stage_feats
        g_t = probe.out_t.stage_feats
        if min(len(g_s), len(g_t)) < 2:
            raise UserError("kdsvd relates consecutive stages, so both networks need at least two stages")
        for stage, (f_s, f_t) in enumerate(zip(g_s, g_t), start=1):
            if f_s.shape[1] != f_t.shape[1]:
                raise UserError(f"kdsvd needs equal student and teacher channels at every stage; stage {stage} "
                                f"has {f_s.shape[1]} (student) vs {f_t.shape[1]} (teacher)")
        self.criterion = KDSVD()

    def loss(self, out_s, out_t, batch, ctx):
        return {"kdsvd": sum(self.criterion(out_s.stage_feats, out_t.stage_feats))}
