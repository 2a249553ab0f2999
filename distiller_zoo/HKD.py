"""HKD: match the teacher's information flow (probabilistic similarity structure) at every stage."""
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

    Layer i (0 = shallowest given) is weighted init_weight * decay**i. SemCKD computes that weight but applies
    only init_weight to layer 0 and weight 1 to every other layer; `faithful=True` reproduces that. (In the
    authors' code the decay is over epochs, not layers: the penultimate feature has weight 1 and the others a shared
    weight init_weight * decay**epoch; neither SemCKD nor this class implements that schedule.)
    """

    def __init__(self, init_weight=100, decay=0.7, *, faithful=False):
        super().__init__()
        self.init_weight = init_weight
        self.decay = decay
        self.faithful = faithful

    def forward(self, f_s, f_t):
        """Weighted sum over zipped layer pairs of lists of [B, ...] features (any shapes; flattened per sample)."""
        loss = 0
        for i, (student, teacher) in enumerate(zip(f_s, f_t)):
            layer_loss = combined_prob_loss(teacher.reshape(teacher.shape[0], -1),
                                            student.reshape(student.shape[0], -1))
            loss = loss + self.layer_weight(i) * layer_loss
        return loss

    def layer_weight(self, i):
        """Weight of layer i: init_weight * decay**i, or SemCKD's init_weight for i == 0 and 1 after if faithful."""
        if self.faithful:
            return self.init_weight if i == 0 else 1
        return self.init_weight * self.decay ** i


@register_distiller("hkd")
class HKDDistiller(Distiller):
    """HKD as SemCKD runs it: HKDLoss(--hkd_initial_weight, --hkd_decay) over the stage outputs (feat[1:-1])."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = HKDLoss(init_weight=opt.hkd_initial_weight, decay=opt.hkd_decay, faithful=opt.hkd_faithful)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument('--hkd_initial_weight', default=100, type=float, help='Initial layer weight for HKD method')
        parser.add_argument('--hkd_decay', default=0.7, type=float, help='Layer weight decay for HKD method')
        parser.add_argument('--hkd_faithful', action='store_true',
                            help="HKD: reproduce SemCKD's weighting (init weight on the first layer, 1 on the others) "
                                 "instead of init_weight * decay**layer")

    def loss(self, out_s, out_t, batch):
        return {"hkd": self.criterion(out_s.stage_feats, out_t.stage_feats)}
