"""AB: transfer the teacher's activation boundaries (pre-ReLU signs) in an init stage."""
from torch import nn

from models.util import Connector

from .base import Distiller, Needs, register_distiller, require_method


class ABLoss(nn.Module):
    """Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons (Heo et al., AAAI 2019)."""

    def __init__(self, feat_num, margin=1.0):
        super().__init__()
        self.w = [2 ** (i - feat_num + 1) for i in range(feat_num)]
        self.margin = margin

    def forward(self, g_s, g_t):
        """One loss per pair of same-shaped pre-activations [B, C, H, W] (pairs zipped).

        Stage i of `feat_num` is weighted 2**(i - feat_num + 1) (the deepest 1, each shallower one half the
        next); each loss is divided by the batch size and scaled by 3/1000, as in the authors' code.
        """
        batch_size = g_s[0].shape[0]
        return [w * self.criterion_alternative_l2(s, t) / batch_size / 1000 * 3
                for w, s, t in zip(self.w, g_s, g_t)]

    def criterion_alternative_l2(self, source, target):
        """Summed squared hinge pushing `source` beyond -margin where `target` <= 0 and beyond +margin where > 0."""
        off_violation = (source > -self.margin) & (target <= 0)
        on_violation = (source <= self.margin) & (target > 0)
        return ((source + self.margin) ** 2 * off_violation.float()
                + (source - self.margin) ** 2 * on_violation.float()).sum()


@register_distiller("abound")
class ABDistiller(Distiller):
    """AB as RepDistiller runs it: the init stage trains a Connector and the student's feature modules on ABLoss
    over the pre-ReLU stage outputs; distillation then adds no term of its own (only CE and KD).

    RepDistiller keeps the Connector out of the main optimizer (and in eval mode, unused): `param_groups` is empty.
    """

    needs = Needs(feats=True, preact=True, init_stage=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        require_method(student, "get_feat_modules", "abound", "student")
        s_shapes = [f.shape for f in probe.out_s.stage_feats]
        t_shapes = [f.shape for f in probe.out_t.stage_feats]
        self.connector = Connector(s_shapes, t_shapes)
        self.criterion = ABLoss(len(s_shapes))

    def loss(self, out_s, out_t, batch, ctx):
        return {}

    def param_groups(self, opt):
        return []

    def init_modules(self, student):
        return [self.connector, student.get_feat_modules()]

    def init_loss(self, out_s, out_t, batch, ctx):
        return sum(self.criterion(self.connector(out_s.stage_feats), out_t.stage_feats))
