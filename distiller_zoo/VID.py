"""VID: maximise a Gaussian lower bound on the mutual information between student and teacher stages."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .AT import pool_to_common_height
from .base import Distiller, Needs, register_distiller


def conv1x1(in_channels, out_channels):
    """Bias-free 1x1 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False)


def inverse_softplus(y):
    """x such that log(1 + exp(x)) == y."""
    return math.log(math.exp(y) - 1.0)


class VIDLoss(nn.Module):
    """Variational Information Distillation for Knowledge Transfer (Ahn et al., CVPR 2019)."""

    def __init__(self, num_input_channels, num_mid_channel, num_target_channels, init_pred_var=5.0, eps=1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_target_channels),
        )
        self.log_scale = nn.Parameter(inverse_softplus(init_pred_var - eps) * torch.ones(num_target_channels))
        self.eps = eps

    def forward(self, input, target):
        """Gaussian negative log-likelihood (without the log(2*pi) constant) of the teacher map [B, C_t, H, W]
        under mean regressor(student map [B, C_s, H', W']) and per-channel variance softplus(log_scale) + eps,
        averaged over all elements; the larger map is average-pooled to the other's size first."""
        input, target = pool_to_common_height(input, target)
        pred_mean = self.regressor(input)
        pred_var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)


@register_distiller("vid")
class VIDDistiller(Distiller):
    """One VIDLoss(C_s, C_t, C_t) per stage pair (RepDistiller's feat[1:-1], zipped); all of them train."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        g_s = probe.out_s.stage_feats
        g_t = probe.out_t.stage_feats
        self.criterion = nn.ModuleList(
            [VIDLoss(f_s.shape[1], f_t.shape[1], f_t.shape[1]) for f_s, f_t in zip(g_s, g_t)])

    def loss(self, out_s, out_t, batch, ctx):
        pairs = zip(out_s.stage_feats, out_t.stage_feats, self.criterion)
        return {"vid": sum(vid(f_s, f_t) for f_s, f_t, vid in pairs)}
