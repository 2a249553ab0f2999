"""OFD: pre-ReLU stage features, a conv-BN connector on the student, a margin ReLU on the teacher, partial L2.

Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019. Official code read:
clovaai/overhaul-distillation CIFAR-100/{distiller.py, train_with_distillation.py, load_settings.py} (76344a8) and
mdistiller mdistiller/distillers/OFD.py, configs/cifar100/ofd.yaml, engine/cfg.py (a08d46f). Stage i of n (paired
from the deep end) is weighted 1 / 2^(n - 1 - i); the teacher's map is average-pooled to the student's size
(mdistiller; clovaai requires equal sizes). clovaai's sum / B / 1000 is mdistiller's batch mean times
FEAT_WEIGHT 0.001: our -b.

Differences from the official code:
- Pairing: mdistiller keeps one margin per teacher BN, indexed from the shallowest, while stages are paired from
  the deep end, so a teacher with more stages than the student crashes (vgg13 -> resnet8x4); its ResNet50
  get_stage_channels omits the stem, so connectors for 3 stages meet 4 stage maps (every ResNet50 teacher
  crashes). Here stages, connectors and margins are paired from the deep end in both modes (nothing to keep).
- Teacher mode: both official codes run the teacher in train mode (BN batch statistics; clovaai calls
  t_net.train(), mdistiller's OFD.train skips the base class's teacher.eval()). Default: the teacher in eval mode
  (the loop's features); --ofd_faithful (OFDDistiller.faithful): its features are recomputed in train mode at each
  step, then its mode and BN running statistics are restored (the official runs never read them again), so the
  loop, the KL term and other methods sharing the teacher see it unchanged.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller, require_method

TAIL_PROBABILITY_FLOOR = 0.001  # below this P(x < 0) the official margin falls back to -3 sigma


def get_margin_from_BN(bn):
    """OFD's margin per channel (Heo et al., ICCV 2019): E[x | x < 0] for x ~ N(beta, gamma^2) of a BN -> [C].

    m - s phi(m / s) / Phi(-m / s) with s = |gamma|, m = beta; -3 s where Phi(-m / s) <= 0.001. Computed in float64
    from the BN's affine parameters (no gradient), returned in their dtype.
    """
    s = bn.weight.detach().double().abs()
    m = bn.bias.detach().double()
    tail = torch.special.ndtr(-m / s)
    density = torch.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(tail > TAIL_PROBABILITY_FLOOR, m - s * density / tail, -3 * s)
    return margin.to(bn.weight.dtype)


def feat_loss(source, target, margin):
    """OFD's partial L2 (Heo et al., ICCV 2019) between the connector's output and max(teacher, margin).

    source, target [B, C, H, W], margin [C] or [1, C, 1, 1]: squared errors except where source <= target' <= 0,
    target' = max(target, margin); summed over C, H, W and averaged over B -> 0-d.
    """
    margin = margin.to(source).reshape(1, -1, 1, 1)
    target = torch.max(target, margin)
    mask = (source > target) | (target > 0)
    return ((source - target) ** 2 * mask.to(source.dtype)).sum() / source.shape[0]


def build_feature_connector(t_channel, s_channel, kernel_size=1):
    """OFD's connector (Heo et al., ICCV 2019): conv (He-normal, fan-out) + BN (1, 0), s_channel -> t_channel."""
    conv = nn.Conv2d(s_channel, t_channel, kernel_size=kernel_size, stride=1, padding=(kernel_size - 1) // 2,
                     bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channel)))
    bn = nn.BatchNorm2d(t_channel)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class ConnectorConvBN(nn.Module):
    """OFD's student-side connectors (Heo et al., ICCV 2019), one per paired stage: `connectors[i]` = conv + BN."""

    def __init__(self, s_channels, t_channels, kernel_size=1):
        super().__init__()
        if len(s_channels) != len(t_channels):
            raise UserError(f"OFD needs as many student as teacher stages, got {len(s_channels)} and {len(t_channels)}")
        self.s_channels = s_channels
        self.t_channels = t_channels
        self.connectors = nn.ModuleList([build_feature_connector(t, s, kernel_size)
                                         for t, s in zip(t_channels, s_channels)])

    def forward(self, g_s):
        """Each student map [B, C_s, H, W] through its connector -> [B, C_t, H, W]."""
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


def align_list(*lists):
    """The last min(len) items of each list: stages are paired from the deep end (mdistiller's _align_list)."""
    n = min(len(items) for items in lists)
    return [list(items)[-n:] for items in lists]


class OFDModules:
    """What OFDLoss and the OFD Distiller share: connectors + margin buffers, and the staged loss (mdistiller's
    init_ofd_modules / ofd_loss). State-dict keys are mdistiller's: connectors.connectors.<i>.{0,1}.*."""

    def init_ofd_modules(self, s_channels, t_channels, bn_before_relu, kernel_size):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"--ofd_kernel_size must be odd and positive (it keeps the map size), got {kernel_size}")
        if len(bn_before_relu) != len(t_channels):
            raise UserError(f"OFD needs one teacher BN per teacher stage, got {len(bn_before_relu)} BNs for "
                            f"{len(t_channels)} stages")
        s_channels, t_channels, bns = align_list(s_channels, t_channels, bn_before_relu)
        widths = [bn.num_features for bn in bns]
        if widths != t_channels:
            raise UserError(f"OFD: the teacher's BNs before ReLU have {widths} channels, its stages {t_channels}")
        self.connectors = ConnectorConvBN(s_channels, t_channels, kernel_size)
        self.n_stages = len(bns)
        for i, bn in enumerate(bns):
            self.register_buffer(f"margin{i}", get_margin_from_BN(bn).reshape(1, -1, 1, 1), persistent=False)

    @property
    def margins(self):
        """Margins [1, C_t, 1, 1] of the paired teacher stages, shallow to deep."""
        return [getattr(self, f"margin{i}") for i in range(self.n_stages)]

    def ofd_loss(self, feature_student, feature_teacher):
        """sum_i feat_loss(connector_i(s_i), pool(t_i), margin_i) / 2^(n - 1 - i) over the paired stages."""
        feature_student, feature_teacher = align_list(feature_student, feature_teacher)
        total = 0.0
        for i, (connector, f_s, f_t, margin) in enumerate(zip(self.connectors.connectors, feature_student,
                                                              feature_teacher, self.margins)):
            source = connector(f_s)
            target = F.adaptive_avg_pool2d(f_t, source.shape[-2:]).detach()
            total = total + feat_loss(source, target, margin) / 2 ** (self.n_stages - i - 1)
        return total


class OFDLoss(OFDModules, nn.Module):
    """A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019) over lists of pre-ReLU stage maps.

    s_channels / t_channels: stage widths, shallow to deep; bn_before_relu: the teacher's BN before each stage's
    ReLU. Lists of unequal length are paired from the deep end. forward(feature_student, feature_teacher) -> 0-d.
    """

    def __init__(self, s_channels, t_channels, bn_before_relu, kernel_size=1):
        super().__init__()
        self.init_ofd_modules(list(s_channels), list(t_channels), list(bn_before_relu), kernel_size)

    def forward(self, feature_student, feature_teacher):
        return self.ofd_loss(feature_student, feature_teacher)


@register_distiller("ofd")
class OFDDistiller(OFDModules, Distiller):
    """OFD on the pre-ReLU stage outputs (RepDistiller's feat[1:-1] with preact); connectors train with the student.

    CIFAR recipe (mdistiller configs/cifar100/ofd.yaml + cfg.py, resnet32x4 -> resnet8x4): -r 1 -a 0 -b 0.001.
    """

    needs = Needs(feats=True, preact=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        require_method(teacher, "get_bn_before_relu", "ofd", "teacher")
        self.faithful = opt.ofd_faithful
        self.__dict__["teacher"] = teacher  # not a submodule: neither trained nor saved with the method
        self.init_ofd_modules([f.shape[1] for f in probe.out_s.stage_feats],
                              [f.shape[1] for f in probe.out_t.stage_feats], teacher.get_bn_before_relu(),
                              opt.ofd_kernel_size)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--ofd_kernel_size", type=int, default=1, help="OFD connector conv kernel size (1)")
        parser.add_argument("--ofd_faithful", action="store_true",
                            help="OFD as the official code: teacher features taken in train mode (off)")

    def train_mode_teacher_feats(self, images):
        """The teacher's pre-ReLU stage maps with its BNs in train mode (the official runs); its mode and buffers
        (BN running statistics) are put back afterwards."""
        was_training = self.teacher.training
        buffers = {name: b.clone() for name, b in self.teacher.named_buffers()}
        self.teacher.train()
        try:
            with torch.no_grad():
                feats, _ = self.teacher(images, is_feat=True, preact=True)
        finally:
            self.teacher.train(was_training)
            with torch.no_grad():
                for name, b in self.teacher.named_buffers():
                    b.copy_(buffers[name])
        return feats[1:-1]

    def loss(self, out_s, out_t, batch, ctx):
        """{"ofd": scalar} from the pre-ReLU stage maps, in >= float32."""
        feats_t = self.train_mode_teacher_feats(batch.images) if self.faithful else out_t.stage_feats
        feats_s = out_s.stage_feats
        with torch.autocast(device_type=feats_s[0].device.type, enabled=False):
            dtype = torch.promote_types(feats_s[0].dtype, torch.float32)
            return {"ofd": self.ofd_loss([f.to(dtype) for f in feats_s], [f.to(dtype) for f in feats_t])}
