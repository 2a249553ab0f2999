"""FT: match the student's translated factor to the teacher's paraphrased factor of the last stage."""
import torch.nn.functional as F
from torch import nn

from models.util import Paraphraser, Translator

from .AT import pool_to_common_height
from .base import Distiller, Needs, register_distiller


class FactorTransfer(nn.Module):
    """Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim et al., NeurIPS 2018).

    As in RepDistiller, a factor map [B, C, H, W] is reduced to its L2-normalised channel mean of f**p1 ([B, H*W],
    an attention map); the paper and the authors' code L2-normalise the whole flattened factor instead.
    """

    def __init__(self, p1=2, p2=1):
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def forward(self, f_s, f_t):
        """Scalar loss between factors [B, C_s, H, W] and [B, C_t, H', W']."""
        return self.factor_loss(f_s, f_t)

    def factor_loss(self, f_s, f_t):
        """Mean |difference| (p2 == 1) or mean difference**p2 of the two reduced factors, after pooling to a common
        size."""
        f_s, f_t = pool_to_common_height(f_s, f_t)
        diff = self.factor(f_s) - self.factor(f_t)
        if self.p2 == 1:
            return diff.abs().mean()
        return diff.pow(self.p2).mean()

    def factor(self, f):
        """Channel mean of f**p1, flattened and L2-normalised: [B, C, H, W] -> [B, H*W]."""
        return F.normalize(f.pow(self.p1).mean(1).view(f.size(0), -1))


@register_distiller("factor")
class FactorTransferDistiller(Distiller):
    """FT as RepDistiller runs it on the last stage output (feat[-2]).

    Init stage: a Paraphraser (k=0.5, no BN) learns to reconstruct the teacher's map (MSE). Distillation:
    FactorTransfer between Translator(student map) (k=0.5, BN, trained with the student) and the paraphraser's
    encoding of the teacher map. As in RepDistiller, only the translator joins the main optimizer (`param_groups`),
    and the paraphraser stays in eval mode whenever the distiller is put in train mode; the init stage sets the
    paraphraser's mode directly through `init_modules`. `on_init_end` freezes it to skip its unused gradients.
    """

    needs = Needs(feats=True, init_stage=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        s_shape = probe.out_s.last_stage.shape
        t_shape = probe.out_t.last_stage.shape
        self.paraphraser = Paraphraser(t_shape)
        self.translator = Translator(s_shape, t_shape)
        self.criterion = FactorTransfer()

    def loss(self, out_s, out_t, batch, ctx):
        factor_s = self.translator(out_s.last_stage)
        factor_t = self.paraphraser(out_t.last_stage, is_factor=True)
        return {"factor": self.criterion(factor_s, factor_t)}

    def param_groups(self, opt):
        return [{"params": list(self.translator.parameters())}]

    # RepDistiller pretrains the paraphraser with lr 0.01 for these students, else with --learning_rate.
    SLOW_INIT_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                          "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")

    def init_lr(self, opt):
        return 0.01 if opt.model_s in self.SLOW_INIT_STUDENTS else opt.learning_rate

    def init_modules(self, student):
        return [self.paraphraser]

    def init_loss(self, out_s, out_t, batch, ctx):
        _, reconstruction = self.paraphraser(out_t.last_stage)
        return F.mse_loss(reconstruction, out_t.last_stage)

    def on_init_end(self):
        self.paraphraser.requires_grad_(False)

    def train(self, mode=True):
        """Set `mode` on the translator; the paraphraser stays in eval mode (RepDistiller's main stage)."""
        super().train(mode)
        self.paraphraser.eval()
        return self
