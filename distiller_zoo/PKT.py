"""PKT: match the conditional probability distributions induced by cosine similarities of pooled features."""
import torch
from torch import nn

from .base import Distiller, Needs, register_distiller


def _unit_rows(x, eps):
    """Rows of [B, D] divided by (their L2 norm + eps); NaN entries (e.g. from 0/0) set to 0."""
    x = x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def _cosine_affinities(x):
    """Cosine similarities of unit rows mapped to [0, 1] and normalised into per-row distributions: [B, B]."""
    similarity = (torch.mm(x, x.transpose(0, 1)) + 1.0) / 2.0
    return similarity / torch.sum(similarity, dim=1, keepdim=True)


class PKT(nn.Module):
    """Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis and Tefas, ECCV 2018)."""

    def forward(self, f_s, f_t):
        """KL-style divergence between teacher and student affinity distributions of features [B, D]."""
        return self.cosine_similarity_loss(f_s, f_t)

    @staticmethod
    def cosine_similarity_loss(output_net, target_net, eps=0.0000001):
        """mean(P_t * log((P_t + eps) / (P_s + eps))) over all [B, B] entries; gradients reach both inputs."""
        model_similarity = _cosine_affinities(_unit_rows(output_net, eps))
        target_similarity = _cosine_affinities(_unit_rows(target_net, eps))
        return torch.mean(target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps)))


@register_distiller("pkt")
class PKTDistiller(Distiller):
    """PKT on the pooled features (RepDistiller's feat[-1])."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = PKT()

    def loss(self, out_s, out_t, batch, ctx):
        return {"pkt": self.criterion(out_s.pooled, out_t.pooled)}
