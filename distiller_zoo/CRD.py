"""CRD: contrastive distillation of pooled features against memory banks of the whole training set."""
from argparse import Namespace

from crd.criterion import CRDLoss
from dataset.contrast import ContrastSampler
from helper.errors import UserError

from .base import Distiller, Needs, register_distiller


def crd_options(opt, probe):
    """opt plus what CRDLoss and CRCDLoss read from the probe: s_dim, t_dim (pooled feature sizes) and n_data."""
    return Namespace(**{**vars(opt), "s_dim": probe.out_s.pooled.flatten(1).shape[1],
                        "t_dim": probe.out_t.pooled.flatten(1).shape[1], "n_data": probe.n_data})


def contrast_sampler(opt, probe):
    """The method's own draw of [positive, K negatives] per sample (--nce_k, --mode, --percent), from the
    training labels; it samples with the step's ctx.generator, independent of the data stream. None without
    labels (then every batch must bring its contrast indices)."""
    if probe.train_targets is None:
        return None
    return ContrastSampler(probe.train_targets, opt.nce_k, getattr(opt, "mode", "exact"),
                           getattr(opt, "percent", 1.0), seed=getattr(opt, "seed", 0))


def contrast_indices(sampler, batch, ctx):
    """[B, K+1] contrast indices of the batch: the batch's own (tests) or drawn with ctx.generator."""
    if batch.contrast_idx is not None:
        return batch.contrast_idx
    if sampler is None:
        raise UserError("contrastive distillation needs the training labels (ProbeShapes.train_targets) to draw "
                        "its negatives")
    if sampler.device != batch.targets.device:
        sampler.to(batch.targets.device)
    return sampler.sample(batch.targets, batch.index, ctx.generator)


@register_distiller("crd")
class CRDDistiller(Distiller):
    """Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020) on pooled features."""

    reads = frozenset({"feat_dim", "mode", "nce_k", "nce_t", "nce_m", "percent", "memory_dtype"})
    needs = Needs(feats=True, index=True, contrast_index=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        self.criterion = CRDLoss(crd_options(opt, probe))
        self.sampler = contrast_sampler(opt, probe)

    def loss(self, out_s, out_t, batch, ctx):
        """{"crd": scalar} from f_s [B, s_dim], f_t [B, t_dim], dataset indices [B] and the K negatives it draws."""
        contrast_idx = contrast_indices(self.sampler, batch, ctx)
        return {"crd": self.criterion(out_s.pooled, out_t.pooled, batch.index, contrast_idx)}
