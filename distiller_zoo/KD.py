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
    has_terms = False

    def loss(self, out_s, out_t, batch, ctx):
        return {}


def normalize(logit):
    """Logit Standardization in Knowledge Distillation (Sun et al., CVPR 2024): z-score over the last dimension.

    (logit - mean) / (1e-7 + std) for logits [..., K], std with Bessel's correction as the official code's
    `Tensor.std`; the dtype is kept (callers upcast first where precision matters).
    """
    mean = logit.mean(dim=-1, keepdim=True)
    std = logit.std(dim=-1, keepdim=True)
    return (logit - mean) / (1e-7 + std)


class DistillKL_logit_stand(nn.Module):
    """Logit Standardization in Knowledge Distillation (Sun et al., CVPR 2024): KD on standardised logits."""

    def forward(self, y_s, y_t, temp):
        """KL(p_t || p_s) * T^2 of normalize(y_s), normalize(y_t) [B, K] at temperature `temp`.

        `temp` is a float or a tensor [] / [1] (CTKD's learnable temperature, through which gradients flow) or
        [B, 1] (one per sample), as DistillKL's. Computed in at least float32 with autocast off; the teacher side
        in log space.
        """
        with torch.autocast(device_type=y_s.device.type, enabled=False):
            s = y_s.to(torch.promote_types(y_s.dtype, torch.float32))
            t = y_t.to(s.dtype)
            T = temp.to(s.dtype) if torch.is_tensor(temp) else temp
            return DistillKL(T)(normalize(s), normalize(t))
