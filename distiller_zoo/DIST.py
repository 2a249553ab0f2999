"""DIST: distillation of inter-class and intra-class relations of the predictions, by Pearson correlation.

Official loss: hunto/image_classification_sota `lib/models/losses/dist_kd.py` (the `classification` submodule of
hunto/DIST_KD, pinned at d9662f7, unchanged at 6f7a70a); its CIFAR-100 recipe: `configs/strategies/distill/
dist_cifar.yaml` (`kd: dist_t4`, i.e. DIST(beta=1, gamma=1, tau=4), weighted 2 against CE weighted 1).
No difference from the official loss: same formula, same eps (1e-8 added to the product of the norms).
"""
import torch
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


def cosine_similarity(a, b, eps=1e-8):
    """Row-wise <a_i, b_i> / (|a_i| |b_i| + eps) of [N, D] tensors -> [N] (DIST, Huang et al., NeurIPS 2022)."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a, b, eps=1e-8):
    """Row-wise Pearson correlation of [N, D] tensors -> [N]: the cosine of the centred rows (DIST, NeurIPS 2022)."""
    return cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), eps)


def inter_class_relation(y_s, y_t):
    """1 - mean over samples of the correlation of each sample's class probabilities [B, K] (DIST, NeurIPS 2022)."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s, y_t):
    """1 - mean over classes of the correlation of each class's probabilities across the batch (DIST, NeurIPS 2022)."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


class DIST(nn.Module):
    """Knowledge Distillation from A Stronger Teacher (Huang, You, Wang, Qian, Xu, NeurIPS 2022)."""

    def __init__(self, beta=1.0, gamma=1.0, tau=1.0):
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.tau = tau

    def forward(self, z_s, z_t):
        """tau^2 * (beta * inter-class + gamma * intra-class relation loss) of logits [B, K] -> 0-d tensor.

        Probabilities are softmax(z / tau) over the classes; computed in at least float32 with autocast off.
        """
        with torch.autocast(device_type=z_s.device.type, enabled=False):
            s = z_s.to(torch.promote_types(z_s.dtype, torch.float32))
            t = z_t.to(s.dtype)
            y_s = (s / self.tau).softmax(dim=1)
            y_t = (t / self.tau).softmax(dim=1)
            inter_loss = self.tau ** 2 * inter_class_relation(y_s, y_t)
            intra_loss = self.tau ** 2 * intra_class_relation(y_s, y_t)
            return self.beta * inter_loss + self.gamma * intra_loss


@register_distiller("dist")
class DISTDistiller(Distiller):
    """DIST on logits: one term "dist", weighted by -b (recipe -r 1 -a 0 -b 2 --dist_tau 4, as dist_cifar.yaml)."""

    needs = Needs()

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        if opt.dist_tau <= 0:
            raise UserError(f"--dist_tau must be positive, got {opt.dist_tau}")
        self.criterion = DIST(opt.dist_beta, opt.dist_gamma, opt.dist_tau)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--dist_beta", type=float, default=1.0, help="DIST weight of the inter-class term (1.0)")
        parser.add_argument("--dist_gamma", type=float, default=1.0,
                            help="DIST weight of the intra-class term (1.0)")
        parser.add_argument("--dist_tau", type=float, default=1.0,
                            help="DIST softmax temperature (1.0; the CIFAR-100 recipe uses 4)")

    def loss(self, out_s, out_t, batch, ctx):
        """{"dist": 0-d} from logits [B, K]."""
        return {"dist": self.criterion(out_s.logits, out_t.logits)}
