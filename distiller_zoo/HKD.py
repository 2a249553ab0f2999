"""HKD: match the teacher's information flow (probabilistic similarity structure) at every stage.

Difference from SemCKD's HKDLoss (the code this file otherwise follows): SemCKD weights the first layer by
init_weight and every other layer by 1 at every epoch (it computes init_weight * decay**layer but never applies it).
The authors (passalis/pkth, cifar10/exp2_proposed.py) weight the penultimate layer by 1 and all the others by one
shared init_weight * decay**epoch, so the intermediate layers guide the early epochs and fade out. The default is
the authors' schedule; `HKDLoss(..., faithful=True)` / `--hkd_faithful` reproduces SemCKD's.
"""
import torch
from torch import nn

from .base import Distiller, Needs, register_distiller


def pairwise_distances(a, eps=1e-6):
    """Euclidean distances between the rows of [N, D], sqrt(max(d^2, 0) + eps): -> [N, N]."""
    squared_norms = a.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * (a @ a.t())
    return torch.sqrt(squared.clamp(min=0) + eps)


def cosine_pairwise_similarities(features, eps=1e-6, normalized=True):
    """Cosine similarities of the rows of [N, D] (norm + eps in the denominator, NaN rows set to 0), mapped from
    [-1, 1] to [0, 1] when `normalized`: -> [N, N]."""
    norms = features.pow(2).sum(dim=1, keepdim=True).sqrt()
    features = features / (norms + eps)
    features = features.masked_fill(features.isnan(), 0)
    similarities = features @ features.t()
    if normalized:
        similarities = (similarities + 1.0) / 2.0
    return similarities


def _row_distributions(similarities):
    """Normalise each row of a non-negative [N, N] matrix to sum to 1."""
    return similarities / similarities.sum(dim=1, keepdim=True)


def _jeffreys(p, q):
    """Mean over entries of the symmetric (Jeffreys) divergence terms (p - q) * (log p - log q)."""
    return ((p - q) * (torch.log(p) - torch.log(q))).mean()


def combined_prob_loss(teacher_features, student_features):
    """Jeffreys divergence between teacher and student similarity distributions of [N, D] features, summed over a
    cosine kernel and a Student-t kernel 1 / (1 + distance) (the authors' 'combined' setting)."""
    cosine = _jeffreys(_row_distributions(cosine_pairwise_similarities(teacher_features)),
                       _row_distributions(cosine_pairwise_similarities(student_features)))
    student_t = _jeffreys(_row_distributions(1.0 / (1 + pairwise_distances(teacher_features))),
                          _row_distributions(1.0 / (1 + pairwise_distances(student_features))))
    return cosine + student_t


class HKDLoss(nn.Module):
    """Heterogeneous Knowledge Distillation using Information Flow Modeling (Passalis et al., CVPR 2020).

    Weighted sum over zipped layer pairs of the combined Jeffreys loss; the last pair is the penultimate layer.
    Default, the authors' schedule: the penultimate layer has weight 1 and every other layer the shared weight
    init_weight * decay**(epoch - 1) (1-based epoch). `faithful=True`: SemCKD's weights, init_weight on the first
    layer and 1 on the others, at every epoch.
    """

    def __init__(self, init_weight=100, decay=0.7, *, faithful=False):
        super().__init__()
        self.init_weight = init_weight
        self.decay = decay
        self.faithful = faithful

    def forward(self, f_s, f_t, epoch=1):
        """Lists of [B, ...] features (any shapes; flattened per sample), shallowest first, at 1-based `epoch`."""
        pairs = list(zip(f_s, f_t))
        loss = 0
        for weight, (student, teacher) in zip(self.layer_weights(len(pairs), epoch), pairs):
            layer_loss = combined_prob_loss(teacher.reshape(teacher.shape[0], -1),
                                            student.reshape(student.shape[0], -1))
            loss = loss + weight * layer_loss
        return loss

    def layer_weights(self, num_layers, epoch=1):
        """Weights of `num_layers` layers at 1-based `epoch`, shallowest first."""
        if self.faithful:
            return [self.init_weight] + [1] * (num_layers - 1)
        shared = self.init_weight * self.decay ** (epoch - 1)
        return [shared] * (num_layers - 1) + [1]


@register_distiller("hkd")
class HKDDistiller(Distiller):
    """HKD over the stage outputs (SemCKD's feat[1:-1]; the last stage is the penultimate layer), weighted by the
    authors' epoch schedule (HKDLoss(--hkd_initial_weight, --hkd_decay)) or SemCKD's with --hkd_faithful."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = HKDLoss(init_weight=opt.hkd_initial_weight, decay=opt.hkd_decay, faithful=opt.hkd_faithful)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument('--hkd_initial_weight', default=100, type=float,
                            help="HKD: weight of the layers before the penultimate one at epoch 1 (100)")
        parser.add_argument('--hkd_decay', default=0.7, type=float,
                            help="HKD: that weight is multiplied by this after every epoch (0.7)")
        parser.add_argument('--hkd_faithful', action='store_true',
                            help="HKD: SemCKD's weighting instead (--hkd_initial_weight on the first layer, 1 on the "
                                 "others, no decay)")

    def loss(self, out_s, out_t, batch, ctx):
        return {"hkd": self.criterion(out_s.stage_feats, out_t.stage_feats, epoch=ctx.epoch)}
