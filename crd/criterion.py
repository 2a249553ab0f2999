"""CRD loss of Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020."""
import torch
from torch import nn

from models.util import Embed, Normalize  # noqa: F401  (RepDistiller exposes them here too)

from .memory import ContrastMemory, check_memory_args

eps = 1e-7


class CRDLoss(nn.Module):
    """CRD loss (Tian, Krishnan, Isola, ICLR 2020): both symmetric NCE terms, teacher- and student-anchored.

    Reads opt.s_dim, opt.t_dim (feature sizes), opt.feat_dim (embedding size), opt.nce_k (negatives),
    opt.nce_t (temperature), opt.nce_m (memory momentum), opt.n_data (training-set size = memory rows),
    opt.memory_dtype (bank storage, float32 | bfloat16; float32 when absent).
    """

    def __init__(self, opt):
        super().__init__()
        memory_dtype = getattr(opt, "memory_dtype", "float32")
        check_memory_args(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m, memory_dtype=memory_dtype)
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m,
                                       memory_dtype=memory_dtype)
        self.criterion_t = ContrastLoss(opt.n_data)
        self.criterion_s = ContrastLoss(opt.n_data)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        """f_s [B, s_dim], f_t [B, t_dim], idx [B] dataset indices, contrast_idx [B, K+1] positive first -> scalar."""
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


class ContrastLoss(nn.Module):
    """NCE loss of CRD (Tian, Krishnan, Isola, ICLR 2020, Eq. 18) with uniform noise Pn = 1/n_data."""

    def __init__(self, n_data):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        """x: normalised scores [B, K+1, 1], positive first -> scalar."""
        batch_size, m = x.shape[0], x.shape[1] - 1
        noise = m * (1 / float(self.n_data))
        positive, negatives = x[:, 0], x[:, 1:]
        log_d1 = torch.log(positive / (positive + (noise + eps)))
        log_d0 = torch.log(noise / (negatives + (noise + eps)))
        return -(log_d1.sum() + log_d0.sum()) / batch_size
