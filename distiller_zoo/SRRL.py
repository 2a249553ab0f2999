"""SRRL: match the teacher's penultimate feature, and the teacher's logits when its classifier reads the student's.

As CTKD's and SimKD's port (models/util.py SRRL, recipe -b 1 with their -r/-a): the student's pooled feature goes
through a 1x1-conv/BN/ReLU connector; one MSE pulls it to the teacher's pooled feature, another pulls the teacher
classifier's output on it to the teacher's logits. Both terms are weighted by -b. The teacher's classifier is a
frozen copy held by the Distiller (gradients flow through it into the student, none into it).

Not reproduced: the authors' ImageNet code (jingyang2017/KD_SRRL) applies the connector to the last feature map
before pooling (BN statistics over B*H*W, ReLU before the pooling) and matches spatial means; the ports used here
apply it to the pooled vector.
"""
import torch.nn.functional as F

from helper.errors import UserError
from models.util import SRRL

from .base import Distiller, Needs, register_distiller
from .SimKD import frozen_teacher_classifier


@register_distiller("srrl")
class SRRLDistiller(Distiller):
    """Knowledge Distillation via Softmax Regression Representation Learning (Yang et al., ICLR 2021)."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        s_n, t_n = probe.out_s.pooled.shape[1], probe.out_t.pooled.shape[1]
        self.srrl = SRRL(s_n=s_n, t_n=t_n)
        self.cls_t = frozen_teacher_classifier(teacher, probe.out_t.pooled.flatten(1), probe.logit_t, "srrl")
        if self.cls_t.in_features != t_n:
            raise UserError(f"--distill srrl: the teacher's classifier reads {self.cls_t.in_features} features but "
                            f"its pooled feature has {t_n}")

    def loss(self, out_s, out_t, batch, ctx):
        """{"srrl_feat": MSE(connector(pooled_s), pooled_t), "srrl_sr": MSE(cls_t(connector(pooled_s)), logits_t)},
        in float32; the official loss is their sum."""
        trans_feat_s, pred_feat_s = self.srrl(out_s.pooled.flatten(1), self.cls_t)
        return {"srrl_feat": F.mse_loss(trans_feat_s.float(), out_t.pooled.flatten(1).float()),
                "srrl_sr": F.mse_loss(pred_feat_s.float(), out_t.logits.float())}
