"""ImageNet MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018)."""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .init import init_conv_bn_linear

# expansion t, output channels c, repeats n, first stride s
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]

# A feature is taken after this many modules of `features`: stem, then the last block at 56, 28, 14 and 7 pixels.
FEATURE_TAPS = (1, 4, 7, 14, 18)


def _make_divisible(v, divisor, min_value=None):
    """Round `v` to a multiple of `divisor`, never below `min_value` and never more than 10% down."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    """Convolution, BatchNorm, ReLU6."""

    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, linear projection (1x1); residual when shape is kept."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNReLU(inp, hidden_dim, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2 whose forward can also return the stem, four block outputs and the vector.

    The tapped block outputs come from linear bottlenecks (no activation), so `preact` changes nothing; the peer
    has no `preact` either.
    """

    def __init__(self, num_classes=1000, width_mult=1.0, round_nearest=8):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [ConvBNReLU(3, input_channel, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.ModuleList(features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        init_conv_bn_linear(self)

    def get_feat_modules(self):
        """The convolutional trunk, block by block."""
        return nn.ModuleList(list(self.features))

    def get_bn_before_relu(self):
        """Final BatchNorm of the blocks tapped as features 1-4 (as RepDistiller's CIFAR MobileNetV2 does)."""
        return [self.features[count - 1].conv[-1] for count in FEATURE_TAPS[1:]]

    def forward(self, x, is_feat=False, preact=False):
        """Logits; with `is_feat`, ([stem, block outputs at 1/4, 1/8, 1/16, 1/32, pooled vector], logits)."""
        feats = []
        for count, module in enumerate(self.features, start=1):
            x = module(x)
            if count in FEATURE_TAPS:
                feats.append(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        feats.append(x)
        logits = self.classifier(x)
        return (feats, logits) if is_feat else logits


@register_model("MobileNetV2_Imagenet", size=224)
def mobilenet_v2(**kwargs):
    """MobileNetV2 with width 1.0."""
    return MobileNetV2(**kwargs)
