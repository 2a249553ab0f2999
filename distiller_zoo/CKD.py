"""CKD: sample-wise contrastive distillation of logits (InfoNCE with in-batch negatives)."""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


class CKDLoss(nn.Module):
    """Knowledge distillation via contrastive learning from a sample-wise perspective (Zhu et al., 2024)."""

    def __init__(self, T=1.0):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        """Cross-entropy of teacher i picking student i among the batch's students, averaged over teachers.

        y_s, y_t [B, K] logits are L2-normalised; similarities [B_teacher, B_student] are divided by T. One
        direction only, as the official contrastive_loss. Computed in at least float32 with autocast off.
        """
        with torch.autocast(device_type=y_s.device.type, enabled=False):
            z_s = F.normalize(y_s.to(torch.promote_types(y_s.dtype, torch.float32)), dim=1)
            z_t = F.normalize(y_t.to(z_s.dtype), dim=1)
            logits_per_teacher = z_t @ z_s.t()
            target = torch.arange(y_s.shape[0], device=y_s.device)
            return F.cross_entropy(logits_per_teacher / self.T, target)


@register_distiller("ckd")
class CKDDistiller(Distiller):
    """CKD on logits: CE plus this term, as the official distiller; -b is its CL_WEIGHT (recipe -r 1 -a 0 -b 1)."""

    needs = Needs()

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        if opt.ckd_T <= 0:
            raise UserError(f"--ckd_T must be positive, got {opt.ckd_T}")
        self.criterion = CKDLoss(opt.ckd_T)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--ckd_T", type=float, default=1.0, help="CKD contrastive temperature (1.0)")

    def loss(self, out_s, out_t, batch, ctx):
        """{"ckd": scalar} from logits [B, K]."""
        return {"ckd": self.criterion(out_s.logits, out_t.logits)}
