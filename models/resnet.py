"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), RepDistiller layout."""
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from .registry import register_model

__all__ = ["ResNet", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "resnet8x4", "resnet32x4", "resnet8x4_double"]


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def block_output(preact, is_last):
    """ReLU of the residual sum; the last block of a stage also returns the sum itself."""
    out = F.relu(preact)
    return (out, preact) if is_last else out


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut: [B, inplanes, H, W] -> [B, planes, H/stride, W/stride]."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    @property
    def final_bn(self):
        """The BN whose output (plus shortcut) enters the block's last ReLU."""
        return self.bn2

    def residual(self, x):
        """Residual branch, before the addition."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        """Return the activated output, plus the pre-ReLU sum when `is_last`."""
        shortcut = x if self.downsample is None else self.downsample(x)
        return block_output(self.residual(x) + shortcut, self.is_last)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 conv-BN bottleneck plus shortcut: [B, inplanes, H, W] -> [B, 4 * planes, H/stride, W/stride]."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    @property
    def final_bn(self):
        """The BN whose output (plus shortcut) enters the block's last ReLU."""
        return self.bn3

    def residual(self, x):
        """Residual branch, before the addition."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x):
        """Return the activated output, plus the pre-ReLU sum when `is_last`."""
        shortcut = x if self.downsample is None else self.downsample(x)
        return block_output(self.residual(x) + shortcut, self.is_last)


BLOCKS = {"basicblock": (BasicBlock, 6), "bottleneck": (Bottleneck, 9)}


def blocks_per_stage(depth, block_name):
    """Blocks in each of the three stages for a `depth`-layer net of `block_name` blocks."""
    key = block_name.lower()
    if key not in BLOCKS:
        raise UserError(f"ResNet block_name {block_name!r} unknown; use 'basicblock' or 'bottleneck'")
    block, layers_per_block = BLOCKS[key]
    if (depth - 2) % layers_per_block:
        raise UserError(f"ResNet depth {depth} does not fit {key}: use {layers_per_block}n+2")
    return block, (depth - 2) // layers_per_block


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem and three stages of widths num_filters[1:], input [B, 3, 32, 32]."""

    def __init__(self, depth, num_filters, block_name="BasicBlock", num_classes=10):
        super().__init__()
        block, n = blocks_per_stage(depth, block_name)
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)
        self._initialize_weights()

    def _initialize_weights(self):
        """He-normal (fan-out) convolutions, unit-scale zero-shift BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        """A stage of `blocks` blocks; the first may downsample with a 1x1 conv-BN shortcut."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, is_last=(blocks == 1))]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, is_last=(i == blocks - 1)) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        """Modules that produce the intermediate features, in forward order."""
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        """Last BN of each stage, whose output feeds the stage's final ReLU."""
        return [stage[-1].final_bn for stage in (self.layer1, self.layer2, self.layer3)]

    def get_stage_channels(self):
        """Channels of the stem and of each stage output: the widths of feats[:-1] (mdistiller's list)."""
        return [self.conv1.out_channels] + [stage[-1].final_bn.num_features
                                            for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [stem, stage1..3, pooled] (pre-ReLU stages if `preact`)."""
        out = self.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3):
            out, stage_preact = stage(out)
            feats.append(out)
            preacts.append(stage_preact)
        pooled = self.avgpool(out).flatten(1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [pooled], logits


@register_model("resnet8")
def resnet8(**kwargs):
    """ResNet-8, widths 16-16-32-64."""
    return ResNet(8, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet14")
def resnet14(**kwargs):
    """ResNet-14, widths 16-16-32-64."""
    return ResNet(14, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet20")
def resnet20(**kwargs):
    """ResNet-20, widths 16-16-32-64."""
    return ResNet(20, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet32")
def resnet32(**kwargs):
    """ResNet-32, widths 16-16-32-64."""
    return ResNet(32, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet44")
def resnet44(**kwargs):
    """ResNet-44, widths 16-16-32-64."""
    return ResNet(44, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet56")
def resnet56(**kwargs):
    """ResNet-56, widths 16-16-32-64."""
    return ResNet(56, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet110")
def resnet110(**kwargs):
    """ResNet-110, widths 16-16-32-64."""
    return ResNet(110, [16, 16, 32, 64], "basicblock", **kwargs)


@register_model("resnet8x4")
def resnet8x4(**kwargs):
    """ResNet-8 with four times the width: 32-64-128-256."""
    return ResNet(8, [32, 64, 128, 256], "basicblock", **kwargs)


@register_model("resnet32x4")
def resnet32x4(**kwargs):
    """ResNet-32 with four times the width: 32-64-128-256."""
    return ResNet(32, [32, 64, 128, 256], "basicblock", **kwargs)


@register_model("resnet8x4_double")
def resnet8x4_double(**kwargs):
    """CTKD's resnet8x4 with doubled width: 64-128-256-512."""
    return ResNet(8, [64, 128, 256, 512], "basicblock", **kwargs)
