"""CRD: contrastive distillation of pooled features against memory banks of the whole training set."""
from argparse import Namespace

from crd.criterion import CRDLoss

from .base import Distiller, Needs, register_distiller


def crd_options(opt, probe):
    """opt plus what CRDLoss and CRCDLoss read from the probe: s_dim, t_dim (pooled feature sizes) and n_data."""
    return Namespace(**{**vars(opt), "s_dim": probe.out_s.pooled.flatten(1).shape[1],
                        "t_dim": probe.out_t.pooled.flatten(1).shape[1], "n_data": probe.n_data})


@register_distiller("crd")
class CRDDistiller(Distiller):
    """Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020) on pooled features."""

    needs = Needs(feats=True, index=True, contrast_index=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = CRDLoss(crd_options(opt, probe))

    def loss(self, out_s, out_t, batch):
        """{"crd": scalar} from f_s [B, s_dim], f_t [B, t_dim], dataset indices [B], contrast indices [B, K+1]."""
        return {"crd": self.criterion(out_s.pooled, out_t.pooled, batch.index, batch.contrast_idx)}
