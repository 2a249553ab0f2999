"""MLKD: multi-level (instance, batch, class) alignment of predictions at several temperatures, on two views.

Official code: Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/distillers/KD_ours.py` (class KD_ours, commit
5ee473f); with logit standardisation: sunshangquan/logit-standardization-KD `mdistiller/distillers/MLKD.py` (f6e5aa5).
Every term is taken at the temperatures (T, 3, 5, 2, 6), T = --mlkd_temperature. Each image comes in a weak view
(crop + flip) and a strong view (+ RandAugment and Cutout, dataset/strong_aug.py); the student also gets CE on the
strong view ("cls_strong", weighted like -r). Masks come from the teacher's weak-view softmax: a sample is kept when
its confidence (max probability) is at most the batch median, a class when its summed probability is at most the
median over classes.

Where the official code differs from the paper (default: the paper / the evident intent; `MLKDLoss(faithful=True)`
and `--mlkd_faithful`: the code, value for value):
- Confidence masking. The code multiplies an already batch-averaged loss by the boolean mask and averages again,
  which scales the weak-view kd and bc terms by the fraction of kept samples and cc by the fraction of kept classes
  (1/2 each, by construction of the median) and selects nothing. Default: the masks select: kd averages the kept
  samples' per-sample KL over the batch, bc sums the batch Gram only over pairs of kept samples, cc the class Gram
  only over pairs of kept classes (each still normalised by B or K as the unmasked terms).
- Strong-view kd. The code's strong-view sum takes temperatures (T, 3, 5) on the strong logits but (2, 6) on the
  weak logits again. Default: all five temperatures on the strong view.
- Strong-view cc and bc. The code computes them and never returns them. Default: they are added to loss_cc and
  loss_bc (bc with the sample mask, as the code computes it; cc unmasked, likewise).
With logit standardisation (the LS plug-in, or MLKDLoss(logit_stand=True)) only the kd terms see standardised
logits, as in the LS code; cc, bc and the masks use the raw logits.
"""
import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller
from .KD import normalize

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # the official temperatures after the configured one
STRONG_KD_ON_STRONG = 3  # faithful: the strong-view kd takes the first 3 temperatures on strong logits, the rest weak


def _float_pair(a, b):
    """Both tensors in at least float32, in a's promoted dtype."""
    a = a.to(torch.promote_types(a.dtype, torch.float32))
    return a, b.to(a.dtype)


def kd_loss(logits_student, logits_teacher, temperature, reduce=True, logit_stand=False):
    """Instance-level alignment of Multi-Level Logit Distillation (Jin, Wang, Lin, CVPR 2023).

    T^2 KL(softmax(z_t / T) || softmax(z_s / T)) of logits [B, K]: its batch mean (0-d), or per sample [B]; with
    `logit_stand`, of normalize(z) (Sun et al., CVPR 2024). Computed in at least float32 with autocast off; the
    teacher side in log space.
    """
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _float_pair(logits_student, logits_teacher)
        if logit_stand:
            s, t = normalize(s), normalize(t)
        kl = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                      reduction="none", log_target=True).sum(1)
        kl = kl * temperature ** 2
        return kl.mean() if reduce else kl


def cc_loss(logits_student, logits_teacher, temperature, reduce=True):
    """Class-level alignment of Multi-Level Logit Distillation (Jin, Wang, Lin, CVPR 2023).

    Squared differences of the class Grams P^T P [K, K], divided by K, P = softmax(z / T) of logits [B, K].
    reduce: their sum (0-d); else the matrix [K, K].
    """
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _float_pair(logits_student, logits_teacher)
        p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        diff = (p_t.t() @ p_t - p_s.t() @ p_s) ** 2 / s.shape[1]
        return diff.sum() if reduce else diff


def bc_loss(logits_student, logits_teacher, temperature, reduce=True):
    """Batch-level alignment of Multi-Level Logit Distillation (Jin, Wang, Lin, CVPR 2023).

    Squared differences of the batch Grams P P^T [B, B], divided by B, P = softmax(z / T) of logits [B, K].
    reduce: their sum (0-d); else the matrix [B, B].
    """
    with torch.autocast(device_type=logits_student.device.type, enabled=False):
        s, t = _float_pair(logits_student, logits_teacher)
        p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
        diff = (p_t @ p_t.t() - p_s @ p_s.t()) ** 2 / s.shape[0]
        return diff.sum() if reduce else diff


def confidence_masks(logits_teacher_weak):
    """The confidence masks of Multi-Level Logit Distillation's code (Jin, Wang, Lin, CVPR 2023).

    (sample mask [B], class mask [K]) as booleans from the teacher's weak-view logits [B, K]: a sample's confidence
    (max probability) and a class's summed probability at most their median, which interpolates linearly between
    the two middle values (numpy's percentile 50, as the official code).
    """
    with torch.no_grad():
        prob = F.softmax(logits_teacher_weak.detach().to(torch.promote_types(logits_teacher_weak.dtype,
                                                                             torch.float32)), dim=1)
        confidence = prob.max(dim=1).values
        class_confidence = prob.sum(dim=0)
        return (confidence <= torch.quantile(confidence, 0.5),
                class_confidence <= torch.quantile(class_confidence, 0.5))


def _identity(z):
    return z


class MLKDLoss(nn.Module):
    """Multi-Level Logit Distillation (Jin, Wang, Lin, CVPR 2023): (loss_kd, loss_cc, loss_bc) over two views."""

    def __init__(self, temperature=4.0, logit_stand=False, faithful=False):
        super().__init__()
        self.temperature = temperature
        self.temperatures = (float(temperature),) + EXTRA_TEMPERATURES
        self.logit_stand = logit_stand
        self.faithful = faithful

    def forward(self, logits_student_weak, logits_student_strong, logits_teacher_weak, logits_teacher_strong,
                kd_transform=None):
        """Three 0-d terms from logits [B, K] of both networks on both views (unweighted: the loop weights them).

        kd_transform: applied to the kd terms' logits before their temperatures (the loop's logit plug-ins);
        None: normalize when logit_stand, else nothing. Computed in at least float32 with autocast off.
        """
        with torch.autocast(device_type=logits_student_weak.device.type, enabled=False):
            s_w, t_w = _float_pair(logits_student_weak, logits_teacher_weak)
            s_s, t_s = logits_student_strong.to(s_w.dtype), logits_teacher_strong.to(s_w.dtype)
            if kd_transform is None:
                kd_transform = normalize if self.logit_stand else _identity
            kd_s_w, kd_t_w, kd_s_s, kd_t_s = (kd_transform(z) for z in (s_w, t_w, s_s, t_s))
            sample_mask, class_mask = confidence_masks(t_w)
            m, c = sample_mask.to(s_w.dtype), class_mask.to(s_w.dtype)
            temps = self.temperatures
            if self.faithful:
                kd = (sum(kd_loss(kd_s_w, kd_t_w, T) * m.mean() for T in temps)
                      + sum(kd_loss(kd_s_s, kd_t_s, T) for T in temps[:STRONG_KD_ON_STRONG])
                      + sum(kd_loss(kd_s_w, kd_t_w, T) for T in temps[STRONG_KD_ON_STRONG:]))
                cc = sum(cc_loss(s_w, t_w, T) * c.mean() for T in temps)
                bc = sum(bc_loss(s_w, t_w, T) * m.mean() for T in temps)
                return kd, cc, bc
            pairs_m, pairs_c = m[:, None] * m[None, :], c[:, None] * c[None, :]
            kd = (sum((kd_loss(kd_s_w, kd_t_w, T, reduce=False) * m).mean() for T in temps)
                  + sum(kd_loss(kd_s_s, kd_t_s, T) for T in temps))
            cc = (sum((cc_loss(s_w, t_w, T, reduce=False) * pairs_c).sum() for T in temps)
                  + sum(cc_loss(s_s, t_s, T) for T in temps))
            bc = sum((bc_loss(s, t, T, reduce=False) * pairs_m).sum() for s, t in ((s_w, t_w), (s_s, t_s))
                     for T in temps)
            return kd, cc, bc


@register_distiller("mlkd")
class MLKDDistiller(Distiller):
    """MLKD on the weak and strong views' logits: terms mlkd_kd, mlkd_cc, mlkd_bc (weighted by -b, the official
    KD_WEIGHT 0.9) and cls_strong, the CE of the strong view (weighted by -r, as the weak view's cls; official
    CE_WEIGHT 0.1). With the logit standardisation plug-in the kd terms standardise their logits (MLKD+LS)."""

    needs = Needs(strong_view=True)
    consumes = frozenset({"logit_transform"})

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        if opt.mlkd_temperature <= 0:
            raise UserError(f"--mlkd_temperature must be positive, got {opt.mlkd_temperature}")
        self.criterion = MLKDLoss(opt.mlkd_temperature, faithful=opt.mlkd_faithful)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--mlkd_temperature", type=float, default=4.0,
                            help="MLKD's first temperature, used with 3, 5, 2 and 6 (4.0; 2 with --logit_stand)")
        parser.add_argument("--mlkd_faithful", action="store_true",
                            help="MLKD as its official code computes it (masks as constant 1/2 factors, strong-view "
                                 "kd partly on weak logits, no strong-view cc/bc); default: as the paper")

    def loss(self, out_s, out_t, batch, ctx):
        """{"mlkd_kd", "mlkd_cc", "mlkd_bc", "cls_strong": 0-d} from both views' logits [B, K] and targets [B]."""
        if out_s.strong is None or out_t.strong is None:
            raise ValueError("MLKD needs the strong view's logits (out_s.strong, out_t.strong)")
        kd, cc, bc = self.criterion(out_s.logits, out_s.strong.logits, out_t.logits, out_t.strong.logits,
                                    kd_transform=ctx.distill_logits)
        cls_strong = F.cross_entropy(out_s.strong.logits.float(), batch.targets)
        return {"mlkd_kd": kd, "mlkd_cc": cc, "mlkd_bc": bc, "cls_strong": cls_strong}

    def term_weights(self, opt):
        return {"cls_strong": opt.gamma}
