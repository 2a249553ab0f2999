"""SP: match the row-normalised batch similarity (Gram) matrices of the last stage."""
import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, Needs, register_distiller


def batch_similarity(f):
    """Row-L2-normalised Gram matrix of the flattened batch: [B, ...] -> [B, B]."""
    flat = f.view(f.shape[0], -1)
    return F.normalize(torch.mm(flat, flat.t()))


class Similarity(nn.Module):
    """Similarity-Preserving Knowledge Distillation (Tung and Mori, ICCV 2019)."""

    def forward(self, g_s, g_t):
        """One loss of shape [1] per pair of features [B, ...] (pairs zipped)."""
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def similarity_loss(self, f_s, f_t):
        """Squared Frobenius distance of the two similarity matrices over B^2, shaped [1]."""
        bsz = f_s.shape[0]
        diff = batch_similarity(f_t) - batch_similarity(f_s)
        return (diff * diff).view(-1, 1).sum(0) / (bsz * bsz)


@register_distiller("similarity")
class SimilarityDistiller(Distiller):
    """SP loss on the post-activation output of the last stage (RepDistiller's feat[-2], preact=False)."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = Similarity()

    def loss(self, out_s, out_t, batch, ctx):
        loss = sum(self.criterion([out_s.last_stage], [out_t.last_stage]))
        return {"similarity": loss.reshape(())}
