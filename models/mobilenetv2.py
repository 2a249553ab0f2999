"""CIFAR MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018), RepDistiller layout."""
import torch.nn as nn

from helper.errors import UserError
from .registry import register_model
from .init import init_conv_bn_linear

__all__ = ["MobileNetV2", "mobilenetv2_T_w", "mobile_half"]

FEATURE_BLOCKS = (1, 2, 4, 6)


def conv_bn(inp, oup, stride):
    """3x3 conv-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_1x1_bn(inp, oup):
    """1x1 conv-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise 3x3 - linear project (1x1): [B, inp, H, W] -> [B, oup, H/stride, W/stride]."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise UserError(f"InvertedResidual stride {stride} invalid: use 1 or 2")
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        """Projected output, plus the input when shapes allow a residual."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with expansion `T` and width multiplier, stride-2 stem, for square inputs of `input_size`."""

    def __init__(self, T, feature_dim, input_size=32, width_mult=1., remove_avg=False):
        super().__init__()
        if input_size % 32:
            raise UserError(f"MobileNetV2 input_size {input_size} invalid: use a multiple of 32")
        self.remove_avg = remove_avg
        self.inverted_residual_setting = [
            # expansion t, channels c, repeats n, first stride s
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList([])
        for t, c, n, s in self.inverted_residual_setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        init_conv_bn_linear(self)

    def get_bn_before_relu(self):
        """Final (linear-bottleneck) BN of each feature-producing block group."""
        return [self.blocks[i][-1].conv[-1] for i in FEATURE_BLOCKS]

    def get_stage_channels(self):
        """Channels of the stem and of block groups 1/2/4/6, the widths of feats[:-1] (mdistiller's list)."""
        return [self.conv1[0].out_channels] + [self.blocks[i][-1].conv[-1].num_features for i in FEATURE_BLOCKS]

    def get_feat_modules(self):
        """Stem and block groups in forward order."""
        return nn.ModuleList([self.conv1, self.blocks])

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, feature_dim]; with `is_feat`, also [stem, groups 1/2/4/6, pooled].

        The block-group outputs are linear bottlenecks (no ReLU), so `preact` changes nothing.
        """
        out = self.conv1(x)
        feats = [out]
        for index, block in enumerate(self.blocks):
            out = block(out)
            if index in FEATURE_BLOCKS:
                feats.append(out)
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        pooled = out.flatten(1)
        logits = self.classifier(pooled)
        if not is_feat:
            return logits
        return feats + [pooled], logits


def mobilenetv2_T_w(T, W, feature_dim=100):
    """MobileNetV2 with expansion T and width multiplier W for 32x32 inputs."""
    return MobileNetV2(T=T, feature_dim=feature_dim, width_mult=W)


@register_model("MobileNetV2")
def mobile_half(num_classes):
    """MobileNetV2 at half width, expansion 6 (RepDistiller's 'MobileNetV2')."""
    return mobilenetv2_T_w(6, 0.5, num_classes)
