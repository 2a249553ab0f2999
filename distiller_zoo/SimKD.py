"""SimKD: the student's last feature map, projected onto the teacher's, is classified by the teacher's classifier.

The student is trained by an MSE between the projected map and the teacher's map (recipe -r 0 -a 0 -b 1); it is
evaluated and saved as the official code does: student features -> projector -> the teacher's classifier
(`eval_model`). The Distiller holds a frozen copy of the teacher's classifier, so a checkpoint's distiller state
(projector 'proj.*', classifier 'cls_t.*') and the student are all evaluation needs.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError
from models.util import SimKD

from .base import Distiller, Needs, register_distiller


def frozen_teacher_classifier(teacher, pooled, logits, method):
    """A frozen copy of the teacher's classifier: its last nn.Linear, checked to map the probe's pooled feature
    [B, D] to its logits [B, C] (RepDistiller's nets end in global pooling and one Linear)."""
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"--distill {method} reuses the teacher's classifier, but {type(teacher).__name__} has "
                        "no nn.Linear")
    head = copy.deepcopy(linears[-1]).requires_grad_(False)
    with torch.no_grad():
        ref = head.weight
        fits = head.in_features == pooled.shape[1] and torch.allclose(
            head(pooled.to(ref.device, ref.dtype)).float(), logits.to(ref.device).float(), rtol=1e-3, atol=1e-3)
    if not fits:
        raise UserError(f"--distill {method}: the teacher's last nn.Linear does not map its pooled feature to its "
                        "logits, so it cannot be reused as the classifier")
    return head


class SimKDEvalModel(nn.Module):
    """Images [B, 3, H, W] -> logits [B, num_classes] as SimKD's validation: the student's last map (feat[-2])
    through the projector and the teacher's classifier, the map pooled to the teacher map's height if larger."""

    def __init__(self, student, proj, cls_t, t_size):
        super().__init__()
        self.student = student
        self.proj = proj
        self.cls_t = cls_t
        self.t_size = t_size

    def forward(self, x):
        feats, _ = self.student(x, is_feat=True)
        return self.proj.project(feats[-2], self.t_size, self.cls_t)[1]


@register_distiller("simkd")
class SimKDDistiller(Distiller):
    """Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022)."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        feat_s, feat_t = probe.out_s.last_stage, probe.out_t.last_stage
        if feat_s.dim() != 4 or feat_t.dim() != 4:
            raise UserError("--distill simkd needs 4-d last-stage maps [B, C, H, W] from both networks, got "
                            f"{tuple(feat_s.shape)} and {tuple(feat_t.shape)}")
        if opt.simkd_factor < 1:
            raise UserError(f"--simkd_factor must be at least 1, got {opt.simkd_factor}")
        t_n = feat_t.shape[1]
        self.proj = SimKD(s_n=feat_s.shape[1], t_n=t_n, factor=opt.simkd_factor)
        self.cls_t = frozen_teacher_classifier(teacher, probe.out_t.pooled.flatten(1), probe.logit_t, "simkd")
        if self.cls_t.in_features != t_n:
            raise UserError(f"--distill simkd: the teacher's classifier reads {self.cls_t.in_features} features but "
                            f"its last map has {t_n} channels")
        self.t_size = feat_t.shape[2]

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--simkd_factor", type=int, default=2,
                            help="SimKD: the projector's bottleneck width is the teacher's width // this (2)")

    def loss(self, out_s, out_t, batch, ctx):
        """{"simkd": MSE between the projected student map and the teacher's map [B, t_n, h, h]}, in float32."""
        trans_feat_s, trans_feat_t, _ = self.proj(out_s.last_stage, out_t.last_stage, self.cls_t)
        return {"simkd": F.mse_loss(trans_feat_s.float(), trans_feat_t.float())}

    def eval_model(self, student):
        return SimKDEvalModel(student, self.proj, self.cls_t, self.t_size)
