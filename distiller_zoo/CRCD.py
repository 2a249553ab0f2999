"""CRCD: contrastive distillation of anchor relations of pooled features and of their gradient elements.

Zhu et al., "Complementary Relation Contrastive Distillation", CVPR 2021. The CRCD code's settings differ from
CRD's flag defaults here: pass `--nce_k 500 --nce_t 0.05` to train as it does.
"""

import torch
import torch.nn.functional as F
from torch import nn

from crd.criterion import ContrastLoss, CRDLoss, Normalize
from crd.memory import check_memory_args
from crd.relation import RelationMemory
from helper.errors import UserError

from .base import Distiller, Needs, register_distiller
from .CRD import contrast_indices, contrast_sampler, crd_options
from .KD import DistillKL

EMBED_TYPES = ("linear", "nonlinear", "nofc")
GRAD_KD_TYPES = ("cos", "crd", "crcd")
GRAD_COMBINES = ("sum", "product")
# What CRCDLoss reads from opt when a field is missing: the CRCD code's flag defaults.
CRCD_DEFAULTS = {"embed_type": "linear", "feat_dim": 128, "nce_k": 500, "nce_t": 0.05, "nce_m": 0.5,
                 "memory_dtype": "float32"}
COS_GRAD_SCALE = 10.0  # the CRCD code multiplies its cosine gradient loss by 10


def crcd_option(opt, name):
    """opt.name, or the CRCD code's default for it."""
    return getattr(opt, name, CRCD_DEFAULTS[name])


class CRCDLoss(nn.Module):
    """Relation contrastive loss of CRCD (Zhu et al., CVPR 2021), student- and teacher-side terms summed.

    Reads opt.embed_type (linear | nonlinear | nofc, default linear), opt.s_dim, opt.t_dim, opt.feat_dim (128;
    the feature size itself with nofc), opt.nce_k (500), opt.nce_t (0.05), opt.nce_m (0.5), opt.n_data,
    opt.memory_dtype (bank storage, float32 | bfloat16; float32).
    """

    def __init__(self, opt):
        super().__init__()
        embed_type = crcd_option(opt, "embed_type")
        feat_dim = embedding_size(embed_type, opt.s_dim, opt.t_dim, crcd_option(opt, "feat_dim"))
        nce_k, nce_t, nce_m, memory_dtype = (crcd_option(opt, name)
                                             for name in ("nce_k", "nce_t", "nce_m", "memory_dtype"))
        check_memory_args(feat_dim, opt.n_data, nce_k, nce_t, nce_m, memory_dtype=memory_dtype)
        self.embed_s = CRCDEmbed(opt.s_dim, feat_dim, embed_type)
        self.embed_t = CRCDEmbed(opt.t_dim, feat_dim, embed_type)
        self.contrast = RelationMemory(feat_dim, opt.n_data, nce_k, nce_t, nce_m, memory_dtype=memory_dtype)
        self.criterion_s = ContrastLoss(opt.n_data)
        self.criterion_t = ContrastLoss(opt.n_data)

    def forward(self, f_s, f_t, idx, contrast_idx=None):
        """f_s [B, s_dim], f_t [B, t_dim], idx [B] dataset indices, contrast_idx [B, K+1] positive first -> scalar."""
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


def embedding_size(embed_type, s_dim, t_dim, feat_dim):
    """Size of the contrasted embeddings: feat_dim, or the (equal) feature size with no projection."""
    if embed_type not in EMBED_TYPES:
        raise UserError(f"unknown --embed_type {embed_type!r}; choose one of: {', '.join(EMBED_TYPES)}")
    if embed_type != "nofc":
        return feat_dim
    if s_dim != t_dim:
        raise UserError(f"--embed_type nofc needs equal student and teacher feature sizes, got {s_dim} and {t_dim}")
    return s_dim


class CRCDEmbed(nn.Module):
    """Linear, Linear-ReLU-Linear-ReLU-Linear or no projection, then L2 normalisation (Zhu et al., CRCD, CVPR 2021)."""

    def __init__(self, dim_in, dim_out, embed_type="linear"):
        super().__init__()
        if embed_type == "linear":
            self.linear = nn.Linear(dim_in, dim_out)
        elif embed_type == "nonlinear":
            self.linear = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out), nn.ReLU(),
                                        nn.Linear(dim_out, dim_out))
        else:
            self.linear = nn.Identity()
        self.l2norm = Normalize(2)

    def forward(self, x):
        """x [B, ...] flattened to [B, dim_in] -> [B, dim_out], unit L2 norm."""
        return self.l2norm(self.linear(x.reshape(x.shape[0], -1)))


class GradientCosineLoss(nn.Module):
    """10 * (1 - mean cosine) of raw gradient elements: the CRCD code's "mse" loss (Zhu et al., CVPR 2021)."""

    def forward(self, g_s, g_t):
        """g_s [B, D], g_t [B, D] -> scalar."""
        return COS_GRAD_SCALE * (1 - F.cosine_similarity(g_t.flatten(1), g_s.flatten(1), dim=1).mean())


def classifier_head(model):
    """The last nn.Linear of `model`: the classifier mapping the pooled feature to logits in RepDistiller's nets."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"--with_grad needs the teacher's classifier, but {type(model).__name__} has no nn.Linear")
    return linears[-1]


def check_head(head, pooled, logits, role="teacher"):
    """Fail at start-up unless head(pooled [B, D]) reproduces logits [B, C] (the probe batch)."""
    with torch.no_grad():
        if head.in_features != pooled.shape[1] or not torch.allclose(head(pooled), logits, rtol=1e-3, atol=1e-4):
            raise UserError(f"--with_grad: the {role}'s last nn.Linear does not map its pooled feature to its "
                            "logits, so its gradient elements cannot be taken from the head alone")


def student_gradient_element(head, pooled, targets):
    """d CE(head(f), y) / d f at the student's pooled feature f [B, D], with a graph so a loss on it trains the student.

    The logits are recomputed from `pooled` by the classifier head rather than taken from the network's output:
    under --amp bf16 (pooled is a float32 copy of the forward's output) or --compile (pooled and logits are two
    outputs of one compiled node) the network's logits are not a function of `pooled` in the autograd graph.
    """
    ce = F.cross_entropy(head(pooled).float(), targets)
    return torch.autograd.grad(ce, pooled, create_graph=True)[0]


def teacher_gradient_element(head, pooled, targets):
    """d CE(head(f), y) / d f at the teacher's pooled feature f [B, D] -> [B, D], no graph (a fixed target)."""
    with torch.enable_grad():
        feature = pooled.detach().requires_grad_(True)
        ce = F.cross_entropy(head(feature).float(), targets)
        return torch.autograd.grad(ce, feature)[0]


def gradient_criterion(opt):
    """The loss between gradient elements selected by --grad_kd_type."""
    if opt.grad_kd_type == "cos":
        if opt.s_dim != opt.t_dim:
            raise UserError(f"--grad_kd_type cos compares raw gradient elements and needs equal pooled sizes, got "
                            f"{opt.s_dim} and {opt.t_dim}; use --grad_kd_type crcd or crd")
        return GradientCosineLoss()
    return CRCDLoss(opt) if opt.grad_kd_type == "crcd" else CRDLoss(opt)


@register_distiller("crcd")
class CRCDDistiller(Distiller):
    """CRCD (Zhu et al., CVPR 2021): relation contrast of pooled features, plus of gradient elements with --with_grad.

    Terms: "crcd" (weighted by -b) and, with --with_grad, "crcd_grad", the --grad_kd_type loss between the
    gradients of the cross-entropy w.r.t. the student's and the teacher's pooled features. With --grad_combine sum
    (the paper's additive objective) it is weighted by --grad_kd_weight * -b. With --grad_combine product it is the
    CRCD code's form, alpha * KL * grad_kd_weight * loss: the term holds KL_T(student || teacher) * loss, the KL
    recomputed here from both logits with --kd_T (not detached, as in that code), and is weighted by
    -a * --grad_kd_weight. The CRCD code's loss-weight schedule belongs to the training loop, not to this class.
    """

    reads = frozenset({"feat_dim", "mode", "nce_k", "nce_t", "nce_m", "percent", "memory_dtype", "kd_T"})
    tag_flags = frozenset({"with_grad", "grad_kd_type"})
    needs = Needs(feats=True, index=True, contrast_index=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        opt = crd_options(opt, probe)
        self.criterion = CRCDLoss(opt)
        self.sampler = contrast_sampler(opt, probe)
        self.with_grad = getattr(opt, "with_grad", False)
        if self.with_grad:
            self.grad_kd_type, self.grad_combine = opt.grad_kd_type, opt.grad_combine
            self.grad_criterion = gradient_criterion(opt)
            self.kl = DistillKL(opt.kd_T)
            student_head, teacher_head = classifier_head(student), classifier_head(teacher)
            check_head(student_head, probe.feat_s[-1].flatten(1), probe.logit_s, "student")
            check_head(teacher_head, probe.feat_t[-1].flatten(1), probe.logit_t)
            # Kept out of the module tree: the networks' weights are neither this method's parameters nor its state.
            self.__dict__["student_head"], self.__dict__["teacher_head"] = student_head, teacher_head

    @classmethod
    def add_args(cls, parser):
        """--embed_type and the gradient-element flags; --feat_dim and --nce_* are train_student's."""
        parser.add_argument("--embed_type", type=str, default="linear", choices=EMBED_TYPES,
                            help="CRCD projection before the relations (linear)")
        parser.add_argument("--with_grad", action="store_true",
                            help="CRCD: also distil relations of gradient elements (d CE / d pooled feature)")
        parser.add_argument("--grad_kd_type", type=str, default="cos", choices=GRAD_KD_TYPES,
                            help="CRCD gradient-element loss: cos (10 * (1 - cosine), the CRCD code's 'mse'), crd, "
                                 "crcd (cos)")
        parser.add_argument("--grad_kd_weight", type=float, default=1.0, help="CRCD gradient-element weight (1.0)")
        parser.add_argument("--grad_combine", type=str, default="sum", choices=GRAD_COMBINES,
                            help="CRCD gradient term: sum (paper: + grad_kd_weight * beta * loss) or product "
                                 "(CRCD code: + alpha * KL * grad_kd_weight * loss) (sum)")

    @classmethod
    def run_tag(cls, opt):
        """'grad:<type>' with --with_grad (the gradient-element variant)."""
        return f"grad:{opt.grad_kd_type}" if getattr(opt, "with_grad", False) else ""

    def term_weights(self, opt):
        """Weight of "crcd_grad": --grad_kd_weight times -b (sum) or -a (product); "crcd" keeps -b."""
        if not self.with_grad:
            return {}
        scale = opt.alpha if self.grad_combine == "product" else opt.beta
        return {"crcd_grad": opt.grad_kd_weight * scale}

    def loss(self, out_s, out_t, batch, ctx):
        """{"crcd"[, "crcd_grad"]: scalar} from pooled f_s [B, s_dim], f_t [B, t_dim], indices [B] and the [B, K+1]
        contrast indices it draws."""
        contrast_idx = contrast_indices(self.sampler, batch, ctx)
        terms = {"crcd": self.criterion(out_s.pooled, out_t.pooled, batch.index, contrast_idx)}
        if self.with_grad:
            terms["crcd_grad"] = self.gradient_loss(out_s, out_t, batch, contrast_idx)
        return terms

    def gradient_loss(self, out_s, out_t, batch, contrast_idx):
        """--grad_kd_type loss between the gradient elements [B, D] (times the KL with --grad_combine product)."""
        g_s = student_gradient_element(self.student_head, out_s.pooled.flatten(1), batch.targets)
        g_t = teacher_gradient_element(self.teacher_head, out_t.pooled.flatten(1), batch.targets)
        if self.grad_kd_type == "cos":
            loss = self.grad_criterion(g_s, g_t)
        else:
            loss = self.grad_criterion(g_s, g_t, batch.index, contrast_idx)
        if self.grad_combine == "product":
            loss = self.kl(out_s.logits, out_t.logits) * loss
        return loss
