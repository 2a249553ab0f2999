"""KD: temperature-softened KL divergence between student and teacher logits."""
import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, Needs, register_distiller


class DistillKL(nn.Module):
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean, NIPS Workshop 2014)."""

    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t, temp=None):
        """KL(p_t || p_s) * T^2 for logits [B, K]: summed over classes, averaged over the batch.

        `temp` replaces T for this call: a float or a tensor of shape [] / [1] gives RepDistiller's
        batch-level loss; a tensor [B, 1] gives one temperature per sample (instance-wise CTKD), each
        sample's KL weighted by its own T_i^2. Gradients flow into a tensor `temp`.
        """
        T = self.T if temp is None else temp
        # The teacher side in log space: same value, and a finite gradient where p_t underflows to 0
        # (kl_div's target gradient is NaN there, which would poison a learnable temperature).
        kl = F.kl_div(F.log_softmax(y_s / T, dim=1), F.log_softmax(y_t / T, dim=1), reduction='none',
                      log_target=True)
        if torch.is_tensor(T) and T.dim() == 2:
            return (kl.sum(1) * T.squeeze(1) ** 2).mean()
        return kl.sum() * (T ** 2) / y_s.shape[0]


@register_distiller("kd")
class KDDistiller(Distiller):
    """Plain KD: the loop's KL term (-a) is the whole method, so there is no extra term."""

    needs = Needs()

    def loss(self, out_s, out_t, batch):
        return {}
