"""ReviewKD: the student's stages, fused deep-to-shallow by attention (ABF), mimic the teacher's stages (HCL).

Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021. Official code read:
dvlab-research/ReviewKD CIFAR-100/{model/reviewkd.py, train.py, script/reviewKD.sh} (cede6ea) and mdistiller
mdistiller/distillers/ReviewKD.py, configs/cifar100/reviewkd.yaml (a08d46f). Levels are the stage outputs
(RepDistiller's feat[1:-1]) plus the pooled vector as a 1x1 map; channel counts and spatial sizes (the official
in_channels/out_channels/shapes/out_shapes tables) come from the probed shapes. When the networks have different
numbers of stages, the shallowest levels of the deeper network are left out (alignment from the deep end).

Differences from the official code (default: the paper; the code with --reviewkd_faithful, faithful=True on
build_abfs / ReviewKD):
- Mid channels: both official codes hard-code min(512, C_pooled) and ignore their configured maximum
  (mdistiller's MAX_MID_CHANNEL). Default: min(--reviewkd_max_mid_channel, C_pooled); faithful: the 512.
- Teacher features: the paper distils the stages' output features (it describes no pre-ReLU choice); both codes
  feed the student's post-ReLU features but the teacher's pre-ReLU ones (preact=True). Default: the teacher's
  features of the same kind as the student's; faithful: the teacher pre-ReLU (the instance's `needs`).
- Warm-up: min(epoch / 20, 1). dvlab counts epochs from 0 (no review loss in the first epoch), mdistiller from 1.
  Default: mdistiller's (1-based); faithful: dvlab's (epoch - 1) / warm-up.
Not reproduced: dvlab's train.py never puts the teacher in eval mode (nor on the GPU: it cannot run as
released); the teacher here is in eval mode as in mdistiller. mdistiller's STU_PREACT (False) is not exposed.
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import UserError

from .base import Distiller, Needs, register_distiller

OFFICIAL_MAX_MID_CHANNEL = 512  # hard-coded in both official codes
HCL_LEVELS = (4, 2, 1)          # pyramid pooling sizes of the hierarchical context loss


def hcl_loss(fstudent, fteacher):
    """Hierarchical context loss of ReviewKD (Chen et al., CVPR 2021): summed over the level pairs.

    Each pair [B, C, H, H] contributes (MSE + sum_k 2^-k MSE of both maps average-pooled to l_k x l_k) / (1 +
    sum_k 2^-k) over the sizes l in (4, 2, 1) smaller than H (k counts the sizes used). Returns a 0-d tensor.
    """
    total = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        weight, weight_sum = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= h:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            weight_sum += weight
        total = total + loss / weight_sum
    return total


hcl = hcl_loss  # the name in dvlab-research/ReviewKD


class ABF(nn.Module):
    """Attention based fusion of ReviewKD (Chen et al., CVPR 2021): one student level fused with the deeper residual.

    conv1 (1x1 conv-BN) maps [B, in_channel, h, h] to mid_channel; with `fuse`, att_conv (1x1 conv + sigmoid on
    the concatenation) gives two maps weighting it against the deeper level's fused map y (nearest-resized to
    `shape`); the result is nearest-resized to `out_shape` and conv2 (3x3 conv-BN) maps it to out_channel.
    """

    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, y=None, shape=None, out_shape=None):
        """(out [B, out_channel, out_shape, out_shape], fused [B, mid_channel, out_shape, out_shape]) from x and y."""
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def build_abfs(in_channels, out_channels, max_mid_channel=OFFICIAL_MAX_MID_CHANNEL, faithful=False):
    """ReviewKD's ABF stack (Chen et al., CVPR 2021), deepest level first, as the official `abfs[::-1]`.

    in_channels / out_channels: student / teacher channels per level, shallow to deep (the last is the pooled
    vector). Mid channels: min(max_mid_channel, in_channels[-1]); faithful: min(512, in_channels[-1]).
    """
    mid_channel = min(OFFICIAL_MAX_MID_CHANNEL if faithful else max_mid_channel, in_channels[-1])
    last = len(in_channels) - 1
    abfs = [ABF(c_in, mid_channel, c_out, idx < last)
            for idx, (c_in, c_out) in enumerate(zip(in_channels, out_channels))]
    return nn.ModuleList(abfs[::-1])


def review(abfs, features, shapes, out_shapes):
    """ReviewKD's review path (Chen et al., CVPR 2021): student levels (shallow to deep, [B, C, h, h]) through the
    ABF stack (deepest first) -> outputs shallow to deep, each at its teacher level's channels and size."""
    levels = features[::-1]
    out, fused = abfs[0](levels[0], out_shape=out_shapes[0])
    results = [out]
    for feature, abf, shape, out_shape in zip(levels[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out, fused = abf(feature, fused, shape, out_shape)
        results.insert(0, out)
    return results


def as_map(pooled):
    """The pooled vector [B, D] as a 1x1 map [B, D, 1, 1] (the official networks return it unflattened)."""
    return pooled.reshape(pooled.shape[0], -1, 1, 1)


class ReviewKD(nn.Module):
    """dvlab's student wrapper for ReviewKD (Chen et al., CVPR 2021): its state_dict is the official checkpoint's.

    student: a network of this repository (`student(x, is_feat=True)`); in_channels/out_channels shallow to deep,
    shapes/out_shapes deep to shallow (the official tables; out_shapes defaults to shapes). Its levels are the last
    len(in_channels) of the student's [stem, stages..., pooled] features. forward(x) -> (results, logits).
    """

    def __init__(self, student, in_channels, out_channels, shapes, out_shapes=None,
                 max_mid_channel=OFFICIAL_MAX_MID_CHANNEL, faithful=False):
        super().__init__()
        self.student = student
        self.shapes = shapes
        self.out_shapes = shapes if out_shapes is None else out_shapes
        self.abfs = build_abfs(in_channels, out_channels, max_mid_channel, faithful)

    def forward(self, x):
        feats, logits = self.student(x, is_feat=True)
        levels = feats[:-1] + [as_map(feats[-1])]
        return review(self.abfs, levels[-len(self.abfs):], self.shapes, self.out_shapes), logits


def review_levels(out):
    """A network's ReviewKD levels: stage outputs then the pooled vector as a 1x1 map, shallow to deep."""
    return list(out.stage_feats) + [as_map(out.pooled)]


def aligned(levels_s, levels_t):
    """The last min(len) levels of each list: the deepest levels are paired, extra shallow ones dropped."""
    n = min(len(levels_s), len(levels_t))
    return levels_s[-n:], levels_t[-n:]


def review_warmup(epoch, iteration, iters_per_epoch, warmup, zero_based=False):
    """ReviewKD's warm-up min(epoch / warmup, 1): 1-based epochs (mdistiller), or 0-based (dvlab); 1 if warmup=0."""
    if warmup <= 0:
        return 1.0
    return min((epoch - 1 if zero_based else epoch) / warmup, 1.0)


@register_distiller("reviewkd")
class ReviewKDDistiller(Distiller):
    """ReviewKD: the ABF stack trains with the student; the term is -b * HCL, ramped in over the warm-up.

    CIFAR recipe (mdistiller configs/cifar100/reviewkd.yaml, resnet32x4 -> resnet8x4): -r 1 -a 0 -b 5. With
    --reviewkd_faithful the instance's `needs` asks the loop for the teacher's pre-ReLU features (teacher_preact).
    """

    needs = Needs(feats=True)

    def __init__(self, opt, probe, student, teacher):
        super().__init__(opt, probe, student, teacher)
        if opt.reviewkd_warmup_epochs < 0 or opt.reviewkd_max_mid_channel < 1:
            raise UserError(f"--reviewkd_warmup_epochs must be >= 0 and --reviewkd_max_mid_channel >= 1, got "
                            f"{opt.reviewkd_warmup_epochs} and {opt.reviewkd_max_mid_channel}")
        self.faithful = opt.reviewkd_faithful
        if self.faithful:
            self.needs = Needs(feats=True, teacher_preact=True)
        levels_s, levels_t = aligned(review_levels(probe.out_s), review_levels(probe.out_t))
        for f in levels_s + levels_t:
            if f.shape[2] != f.shape[3]:
                raise UserError(f"reviewkd needs square feature maps, got {list(f.shape)}")
        self.shapes = [f.shape[2] for f in levels_s][::-1]
        self.out_shapes = [f.shape[2] for f in levels_t][::-1]
        self.abfs = build_abfs([f.shape[1] for f in levels_s], [f.shape[1] for f in levels_t],
                               opt.reviewkd_max_mid_channel, self.faithful)

    @classmethod
    def add_args(cls, parser):
        parser.add_argument("--reviewkd_warmup_epochs", type=float, default=20.0,
                            help="ReviewKD ramps its term in over this many epochs (20)")
        parser.add_argument("--reviewkd_max_mid_channel", type=int, default=OFFICIAL_MAX_MID_CHANNEL,
                            help="ReviewKD ABF mid channels: min(this, student's pooled width) (512)")
        parser.add_argument("--reviewkd_faithful", action="store_true",
                            help="ReviewKD as the official code: mid channels min(512, .), teacher pre-ReLU, "
                                 "0-based warm-up (off)")

    def loss(self, out_s, out_t, batch, ctx):
        """{"reviewkd": HCL} between the reviewed student levels and the teacher levels, in >= float32."""
        levels_s, levels_t = aligned(review_levels(out_s), review_levels(out_t))
        with torch.autocast(device_type=levels_s[0].device.type, enabled=False):
            dtype = torch.promote_types(levels_s[0].dtype, torch.float32)
            results = review(self.abfs, [f.to(dtype) for f in levels_s], self.shapes, self.out_shapes)
            return {"reviewkd": hcl_loss(results, [f.detach().to(dtype) for f in levels_t])}

    def term_schedules(self, opt):
        return {"reviewkd": partial(review_warmup, warmup=opt.reviewkd_warmup_epochs, zero_based=self.faithful)}
