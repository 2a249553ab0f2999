"""IRG: match instance relationship graphs (and their change between layers) of student and teacher."""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


class IRGLoss(nn.Module):
    """Knowledge Distillation via Instance Relationship Graph (Liu et al., CVPR 2019), as implemented in SemCKD.

    Graph term: MSE between max-normalised squared-distance matrices of the flattened features, plus the MSE of
    the features themselves when their shapes agree. Transform term: for layer pairs (0, 1), (2, 3), ... of
    `transform_s`/`transform_t`, the squared gap between how much student and teacher graphs (and features, when
    shapes agree) change across the pair. Teacher-side distances are computed without gradient.
    """

    def __init__(self, w_graph=1, w_transform=1):
        super().__init__()
        self.w_graph = w_graph
        self.w_transform = w_transform

    def forward(self, f_s, f_t, transform_s, transform_t, no_edge_transform=False):
        """f_s, f_t: [B, ...] features; transform_s, transform_t: lists of [B, ...] maps taken in pairs."""
        with torch.no_grad():
            t_d = self.pdist(f_t.reshape(f_t.shape[0], -1), squared=True)
        loss = F.mse_loss(self.pdist(f_s.reshape(f_s.shape[0], -1), squared=True), t_d)
        if f_s.shape == f_t.shape:
            loss = loss + F.mse_loss(f_s, f_t)
        loss = loss * self.w_graph
        layers = list(zip(transform_s, transform_t))
        for (l1_s, l1_t), (l2_s, l2_t) in zip(layers[0::2], layers[1::2]):
            loss = loss + self.transform_loss(l1_s, l2_s, l1_t, l2_t, not no_edge_transform) * self.w_transform
        return loss

    def transform_loss(self, l1_s, l2_s, l1_t, l2_t, edge_transform=True):
        """Squared gap between the student's and the teacher's change from layer 1 to layer 2 (a scalar, or 0)."""
        terms = []
        if edge_transform:
            s_change = F.mse_loss(self._graph(l1_s), self._graph(l2_s))
            with torch.no_grad():
                t_change = F.mse_loss(self._graph(l1_t), self._graph(l2_t))
            terms.append(F.mse_loss(s_change, t_change))
        if l1_s.shape == l2_s.shape and l1_t.shape == l2_t.shape:
            with torch.no_grad():
                t_change = F.mse_loss(l1_t, l2_t)
            terms.append(F.mse_loss(F.mse_loss(l1_s, l2_s), t_change))
        return sum(terms)

    def _graph(self, f):
        """Max-normalised squared-distance matrix of the flattened maps: [B, ...] -> [B, B]."""
        return self.pdist(f.reshape(f.shape[0], -1), squared=True)

    @staticmethod
    def pdist(e, squared=False, eps=1e-12, normalization='max'):
        """Pairwise (squared) Euclidean distances of rows of [N, D], clamped at eps, zero diagonal; divided by
        (max + eps) when normalization == 'max'. -> [N, N]"""
        e_square = e.pow(2).sum(dim=1)
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
        if not squared:
            res = res.sqrt()
        diagonal = torch.eye(len(e), dtype=torch.bool, device=e.device)
        res = res.masked_fill(diagonal, 0)
        if normalization == 'max':
            res = res / (res.max() + eps)
        return res


def transform_features(out, indices):
    """The maps `out.feats[i]` for each user-given index i (SemCKD's --transform_layer_s/t index feat lists)."""
    return [out.feats[i] for i in indices]


def check_transform_layers(layers_s, layers_t, n_feats_s, n_feats_t):
    """UserError unless the transform layers come in equal-length, even-length, in-range lists."""
    if len(layers_s) != len(layers_t):
        raise UserError(f"--transform_layer_s and --transform_layer_t need the same number of layers, got "
                        f"{len(layers_s)} and {len(layers_t)}")
    if len(layers_s) % 2:
        raise UserError(f"IRG transform layers are used in pairs (0, 1), (2, 3), ...; got {len(layers_s)} per side")
    for flag, layers, n_feats in (("s", layers_s, n_feats_s), ("t", layers_t, n_feats_t)):
        bad = [i for i in layers if not -n_feats <= i < n_feats]
        if bad:
            raise UserError(f"--transform_layer_{flag} {bad} out of range: the model has features 0..{n_feats - 1}")


@register_distiller("irg")
class IRGDistiller(Distiller):
    """IRG as SemCKD runs it: graph of the pooled features (feat[-1]) plus transform losses over the user-chosen
    pairs of feat indices (--transform_layer_s/t, none by default)."""

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        check_transform_layers(opt.transform_layer_s, opt.transform_layer_t, len(probe.feat_s), len(probe.feat_t))
        self.transform_layer_s = list(opt.transform_layer_s)
        self.transform_layer_t = list(opt.transform_layer_t)
        self.no_edge_transform = opt.no_edge_transform
        self.criterion = IRGLoss()

    @classmethod
    def add_args(cls, parser):
        parser.add_argument('--transform_layer_t', nargs='+', type=int, default=[],
                            help='IRG: teacher feat indices for the transform loss, taken in pairs')
        parser.add_argument('--transform_layer_s', nargs='+', type=int, default=[],
                            help='IRG: student feat indices for the transform loss, taken in pairs')
        parser.add_argument('--no_edge_transform', action='store_true',
                            help='IRG: drop the edge (distance-matrix) part of the transform loss')

    def loss(self, out_s, out_t, batch, ctx):
        return {"irg": self.criterion(out_s.pooled, out_t.pooled,
                                      transform_features(out_s, self.transform_layer_s),
                                      transform_features(out_t, self.transform_layer_t),
                                      self.no_edge_transform)}
