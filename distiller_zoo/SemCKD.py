"""SemCKD: each student stage mimics every teacher stage, weighted by a learned cross-layer attention."""
import torch
from torch import nn

from models.util import SelfA

from .base import Distiller, Needs, register_distiller


class SemCKDLoss(nn.Module):
    """Cross-Layer Distillation with Semantic Calibration (Chen et al., AAAI 2021)."""

    def forward(self, s_value, f_target, weight):
        """sum_{b,i,j} weight[b, i, j] * mean((s_value[i][j][b] - f_target[i][j][b])^2) / (B * num_stu), where
        s_value[i][j] and f_target[i][j] are [B, C_t_j, h, h] and weight is the attention [B, num_stu, num_tea]."""
        bsz, num_stu, _ = weight.shape
        ind_loss = torch.stack([torch.stack([pair_mse(s, t) for s, t in zip(row_s, row_t)], dim=1)
                                for row_s, row_t in zip(s_value, f_target)], dim=1)
        return (weight * ind_loss).sum() / (bsz * num_stu)


def pair_mse(s, t):
    """Per-sample mean squared error: [B, ...] x [B, ...] -> [B]."""
    return (s - t).pow(2).reshape(s.shape[0], -1).mean(-1)


@register_distiller("semckd")
class SemCKDDistiller(Distiller):
    """SelfA over all stage pairs (RepDistiller's feat[1:-1]) sized for --batch_size; it trains with the student.

    SemCKD's CIFAR recipe is `-r 1 -a 1 -b 400`. Its attention embeds batch Gram matrices, so every training
    batch must be full: the loader drops the last partial batch.
    """

    needs = Needs(feats=True, full_batches=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        g_s = probe.out_s.stage_feats
        g_t = probe.out_t.stage_feats
        self.self_attention = SelfA(len(g_s), len(g_t), opt.batch_size, [f.shape[1] for f in g_s],
                                    [f.shape[1] for f in g_t])
        self.criterion = SemCKDLoss()

    def loss(self, out_s, out_t, batch, ctx):
        s_value, f_target, weight = self.self_attention(out_s.stage_feats, out_t.stage_feats)
        return {"semckd": self.criterion(s_value, f_target, weight)}
