"""DKD: KL divergence decoupled into a target-class term (TCKD) and a non-target-class term (NCKD)."""
import logging
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller
from .KD import normalize

log = logging.getLogger("kd")
GT_MASK_SHIFT = 1000.0  # mdistiller removes the target class from the NCKD softmaxes by subtracting this


def binary_log_probs(log_probs, gt):
    """[log p_target, log p_other] per sample from log-probabilities [B, K] and a one-hot mask [B, K] -> [B, 2]."""
    others = log_probs.masked_fill(gt.bool(), float("-inf"))
    return torch.stack([(log_probs * gt).sum(1), torch.logsumexp(others, dim=1)], dim=1)


def squared_per_sample(temperature):
    """T^2 broadcastable against per-sample losses [B]: a float, or a tensor [] / [1] / [B, 1] flattened."""
    if torch.is_tensor(temperature):
        return temperature.reshape(-1) ** 2
    return temperature ** 2


class DKDloss(nn.Module):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022)."""

    def forward(self, logits_student, logits_teacher, target, alpha, beta, temperature):
        """alpha * TCKD + beta * NCKD, each KL scaled by T^2, summed over the batch and divided by B.

        logits [B, K], target [B] class indices; temperature a float or a tensor [1] / [B, 1] (CTKD), through
        which gradients flow. Computed in at least float32 with autocast off; returns a 0-d tensor. The teacher's
        side is kept in log space (mdistiller's probabilities equal to 0 make the temperature's gradient NaN).
        """
        with torch.autocast(device_type=logits_student.device.type, enabled=False):
            s = logits_student.to(torch.promote_types(logits_student.dtype, torch.float32))
            t = logits_teacher.to(s.dtype)
            T = temperature.to(s.dtype) if torch.is_tensor(temperature) else temperature
            gt = F.one_hot(target.reshape(-1), s.shape[1]).to(s.dtype)
            b_s = binary_log_probs(F.log_softmax(s / T, dim=1), gt)
            b_t = binary_log_probs(F.log_softmax(t / T, dim=1), gt)
            tckd = F.kl_div(b_s, b_t, reduction="none", log_target=True).sum(1)
            nckd = F.kl_div(F.log_softmax(s / T - GT_MASK_SHIFT * gt, dim=1),
                            F.log_softmax(t / T - GT_MASK_SHIFT * gt, dim=1), reduction="none", log_target=True).sum(1)
            per_sample = (alpha * tckd + beta * nckd) * squared_per_sample(T)
            return per_sample.sum() / s.shape[0]


def warmup_factor(epoch, iteration, iters_per_epoch, warmup):
    """mdistiller's min(epoch / warmup, 1) for 1-based epochs; 1 when warmup is 0."""
    return min(epoch / warmup, 1.0) if warmup > 0 else 1.0


@register_distiller("dkd")
class DKDDistiller(Distiller):
    """DKD on logits; with the CTKD plug-in it uses the learnable temperature instead of --dkd_T, and with the logit
    standardisation plug-in it standardises both logits first (the LS code's dkd_loss(..., logit_stand=True)).

    The term is weighted by -b (recipe 1, with -r 1 -a 0 as mdistiller's CE weight 1 and CTKD's DKD script) and
    ramped in by min(epoch / --warmup, 1).
    """

    needs = Needs()
    consumes = frozenset({"temperature", "logit_transform"})

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        if opt.dkd_T <= 0 or opt.warmup < 0:
            raise UserError(f"--dkd_T must be positive and --warmup >= 0, got {opt.dkd_T} and {opt.warmup}")
        if opt.warmup > getattr(opt, "epochs", opt.warmup):
            log.warning("--warmup %d is longer than the run's --epochs %d: the DKD terms never reach full weight "
                        "(they end at %d/%d of it)", opt.warmup, opt.epochs, opt.epochs, opt.warmup)
        self.criterion = DKDloss()
        self.alpha, self.beta, self.T = opt.dkd_alpha, opt.dkd_beta, opt.dkd_T

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--dkd_alpha", type=float, default=1.0, help="DKD weight of TCKD (1.0)")
        parser.add_argument("--dkd_beta", type=float, default=8.0, help="DKD weight of NCKD (8.0)")
        parser.add_argument("--dkd_T", type=float, default=4.0, help="DKD temperature without CTKD (4.0)")
        parser.add_argument("--warmup", type=int, default=20, help="DKD ramps in over this many epochs (20)")

    def loss(self, out_s, out_t, batch, ctx):
        """{"dkd": scalar} from logits [B, K] and targets [B]."""
        z_s, z_t = ctx.distill_logits(out_s.logits), ctx.distill_logits(out_t.logits)
        return {"dkd": self.criterion(z_s, z_t, batch.targets, self.alpha, self.beta, ctx.temp(self.T))}

    def term_schedules(self, opt):
        return {"dkd": partial(warmup_factor, warmup=opt.warmup)}


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature, logit_stand=False):
    """Decoupled KD (Zhao et al., CVPR 2022), optionally on standardised logits (Sun et al., CVPR 2024).

    DKDloss's value alpha * TCKD + beta * NCKD (each KL * T^2, summed over the batch / B) of logits [B, K] and
    target [B]; with `logit_stand`, of normalize(logits) instead, standardised in at least float32 with autocast
    off. temperature: a float or a tensor [1] / [B, 1] through which gradients flow. The teacher side stays in log
    space (finite gradients for a learnable temperature where the teacher's probabilities underflow).
    """
    if logit_stand:
        with torch.autocast(device_type=logits_student.device.type, enabled=False):
            s = logits_student.to(torch.promote_types(logits_student.dtype, torch.float32))
            logits_student, logits_teacher = normalize(s), normalize(logits_teacher.to(s.dtype))
    return DKDloss()(logits_student, logits_teacher, target, alpha, beta, temperature)
