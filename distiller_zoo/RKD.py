"""RKD: match pairwise-distance and triplet-angle structure of the pooled features."""
import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, Needs, register_distiller


def normalized_distances(e):
    """Pairwise Euclidean distances [B, B] divided by their mean over the positive entries."""
    d = RKDLoss.pdist(e, squared=False)
    return d / d[d > 0].mean()


def triplet_angles(e):
    """Cosines of the angles at every anchor j between the directions to i and k: [B, D] -> [B*B*B]."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).view(-1)


class RKDLoss(nn.Module):
    """Relational Knowledge Distillation (Park et al., CVPR 2019)."""

    def __init__(self, w_d=25, w_a=50):
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s, f_t):
        """w_d * distance loss + w_a * angle loss (smooth-L1, mean) for features [B, ...]; no gradient to f_t."""
        student = f_s.view(f_s.shape[0], -1)
        teacher = f_t.view(f_t.shape[0], -1)
        with torch.no_grad():
            t_d = normalized_distances(teacher)
            t_angle = triplet_angles(teacher)
        loss_d = F.smooth_l1_loss(normalized_distances(student), t_d)
        loss_a = F.smooth_l1_loss(triplet_angles(student), t_angle)
        return self.w_d * loss_d + self.w_a * loss_a

    @staticmethod
    def pdist(e, squared=False, eps=1e-12):
        """Pairwise (squared) Euclidean distances of rows of [B, D], clamped at eps, with a zero diagonal: [B, B]."""
        e_square = e.pow(2).sum(dim=1)
        prod = e @ e.t()
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
        if not squared:
            res = res.sqrt()
        return res.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0)


@register_distiller("rkd")
class RKDDistiller(Distiller):
    """RKD on the pooled features (RepDistiller's feat[-1]) with the default weights 25 / 50."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = RKDLoss()

    def loss(self, out_s, out_t, batch, ctx):
        return {"rkd": self.criterion(out_s.pooled, out_t.pooled)}
