"""ICKD-C: distillation of the inter-channel correlation (Gram) of the last stage's feature map.

Official code: ADLab-AutoDrive/ICKD `Cifar100/distiller_zoo/ICKD.py` and `Cifar100/train_student.py` (commit
403b8d3). The student's feature passes a 1x1 conv to the teacher's width and a BatchNorm; both features' channel
Grams [B, C, C] have their rows L2-normalised; the loss is the squared difference summed and divided by C * B.

Differences from the official code, and naming:
- The official `Embed.l2norm` is a BatchNorm2d (its L2 `Normalize` is commented out); the submodule names
  `embed_s.conv2d`, `embed_s.l2norm` are kept so state_dict keys match the official ones.
- The official ICKDLoss also builds `embed_t = Embed(s_dim, feat_dim)`, which never enters the loss (it consumes
  random numbers at construction and sits in the optimizer without ever getting a gradient). Default: not built;
  `ICKDLoss(opt, faithful=True)` / `--ickd_faithful` builds it (frozen: the same non-update), so the state_dict
  keys then include `embed_t.*`.
- The feature is our models' `last_stage` (RepDistiller's feat[-2]). ICKD's own models agree except WRN, whose
  feat[-2] there is relu(bn1(block3 output)) where RepDistiller's (and ours) is the block3 output before them.
"""
from argparse import Namespace

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


class Embed(nn.Module):
    """ICKD's student embedding (Liu et al., ICCV 2021): 1x1 conv without bias, then BatchNorm (named l2norm)."""

    def __init__(self, dim_in=256, dim_out=128):
        super().__init__()
        self.conv2d = nn.Conv2d(dim_in, dim_out, kernel_size=1, stride=1, padding=0, bias=False)
        self.l2norm = nn.BatchNorm2d(dim_out)

    def forward(self, x):
        """[B, dim_in, H, W] -> [B, dim_out, H, W]."""
        return self.l2norm(self.conv2d(x))


class ICKDLoss(nn.Module):
    """Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation (Liu et al., ICCV 2021)."""

    def __init__(self, opt, faithful=False):
        """opt.s_dim, opt.t_dim: channels of the student's and the teacher's feature; opt.feat_dim must be t_dim."""
        super().__init__()
        if opt.feat_dim != opt.t_dim:
            raise UserError(f"ICKD compares the embedded student feature with the teacher's own: feat_dim must equal "
                            f"the teacher's channels t_dim={opt.t_dim}, got {opt.feat_dim}")
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        if faithful:
            self.embed_t = Embed(opt.s_dim, opt.feat_dim).requires_grad_(False)

    def forward(self, g_s, g_t):
        """One 0-d loss per pair of feature maps in the lists g_s [B, s_dim, H, W], g_t [B, t_dim, H', W']."""
        return [self.batch_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def batch_loss(self, f_s, f_t):
        """sum over the batch of |rownorm(G_s) - rownorm(G_t)|^2 / (C * B), G = F F^T over positions: [B, C, C].

        Computed in the embedding's dtype (float32, or float64 in tests) with autocast off.
        """
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            dtype = self.embed_s.conv2d.weight.dtype
            f_s = self.embed_s(f_s.to(dtype))
            bsz, ch = f_s.shape[0], f_s.shape[1]
            if f_t.shape[1] != ch:
                raise ValueError(f"ICKD: the teacher feature has {f_t.shape[1]} channels, the embedding {ch}")
            f_s = f_s.reshape(bsz, ch, -1)
            f_t = f_t.to(dtype).reshape(bsz, ch, -1)
            gram_s = F.normalize(f_s @ f_s.transpose(1, 2), dim=2)
            gram_t = F.normalize(f_t @ f_t.transpose(1, 2), dim=2)
            return ((gram_s - gram_t) ** 2).sum() / (ch * bsz)


@register_distiller("ickd")
class ICKDDistiller(Distiller):
    """ICKD on the last stage's feature maps (RepDistiller's feat[-2]); embed_s trains with the student; one term
    "ickd" weighted by -b (official recipe -a 0 -b 2.5, or -a 1 -b 2.5 with KL)."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        s_dim, t_dim = probe.out_s.last_stage.shape[1], probe.out_t.last_stage.shape[1]
        self.criterion = ICKDLoss(Namespace(s_dim=s_dim, t_dim=t_dim, feat_dim=t_dim), faithful=opt.ickd_faithful)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--ickd_faithful", action="store_true",
                            help="also build ICKD's unused teacher embedding (embed_t), as its official code does")

    def loss(self, out_s, out_t, batch, ctx):
        """{"ickd": 0-d} from the last stage's feature maps."""
        return {"ickd": sum(self.criterion([out_s.last_stage], [out_t.last_stage]))}
