"""CC: correlation congruence between linearly embedded pooled features."""
import torch
from torch import nn

from models.util import LinearEmbed

from .base import Distiller, Needs, register_distiller


class Correlation(nn.Module):
    """Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019)."""

    def forward(self, f_s, f_t):
        """Batch mean of the products of |f_s - f_t| between consecutive samples, summed over dims: [B, D] -> []."""
        delta = torch.abs(f_s - f_t)
        return torch.mean((delta[:-1] * delta[1:]).sum(1))


@register_distiller("correlation")
class CorrelationDistiller(Distiller):
    """CC on LinearEmbed(pooled) of student and teacher; both embeddings (--feat_dim) train with the student."""

    reads = frozenset({"feat_dim"})
    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        dim_s = probe.out_s.pooled.shape[1]
        dim_t = probe.out_t.pooled.shape[1]
        self.embed_s = LinearEmbed(dim_s, opt.feat_dim)
        self.embed_t = LinearEmbed(dim_t, opt.feat_dim)
        self.criterion = Correlation()

    def loss(self, out_s, out_t, batch, ctx):
        return {"correlation": self.criterion(self.embed_s(out_s.pooled), self.embed_t(out_t.pooled))}
