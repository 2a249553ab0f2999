"""FitNet: regress a student feature map onto the teacher's at --hint_layer."""
from torch import nn

from helper.errors import UserError
from models.util import ConvReg

from .base import Distiller, Needs, register_distiller


class HintLoss(nn.Module):
    """FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015)."""

    def __init__(self):
        super().__init__()
        self.crit = nn.MSELoss()

    def forward(self, f_s, f_t):
        """Mean squared error between same-shaped features [B, C, H, W]."""
        return self.crit(f_s, f_t)


def hint_feature(out, hint_layer):
    """The stem (0) or stage output at `hint_layer`: RepDistiller's feat[hint_layer], never the pooled vector."""
    return out.all_but_pooled[hint_layer]


@register_distiller("hint")
class HintDistiller(Distiller):
    """MSE between ConvReg(student feature) and the teacher feature at --hint_layer; ConvReg trains with the student."""

    reads = frozenset({"hint_layer"})
    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.hint_layer = opt.hint_layer
        f_s = self._probe_feature(probe.out_s, "student")
        f_t = self._probe_feature(probe.out_t, "teacher")
        self.regress_s = ConvReg(f_s.shape, f_t.shape)
        self.criterion = HintLoss()

    def _probe_feature(self, out, side):
        maps = len(out.all_but_pooled)
        if not 0 <= self.hint_layer < maps:
            raise UserError(f"--hint_layer {self.hint_layer} is out of range: the {side} has feature maps 0..{maps - 1}")
        return hint_feature(out, self.hint_layer)

    def loss(self, out_s, out_t, batch, ctx):
        f_s = self.regress_s(hint_feature(out_s, self.hint_layer))
        return {"hint": self.criterion(f_s, hint_feature(out_t, self.hint_layer))}
