"""CIFAR ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), RepDistiller layout."""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

__all__ = ["ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]


def projection_shortcut(in_planes, out_planes, stride):
    """Identity when shapes agree, else a strided 1x1 conv-BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


def block_output(preact, is_last):
    """ReLU of the residual sum; the last block of a stage also returns the sum itself."""
    out = F.relu(preact)
    return (out, preact) if is_last else out


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut: [B, in_planes, H, W] -> [B, planes, H/stride, W/stride]."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    @property
    def final_bn(self):
        """The BN whose output (plus shortcut) enters the block's last ReLU."""
        return self.bn2

    def forward(self, x):
        """Return the activated output, plus the pre-ReLU sum when `is_last`."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return block_output(out + self.shortcut(x), self.is_last)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 conv-BN bottleneck plus shortcut: [B, in_planes, H, W] -> [B, 4 * planes, H/stride, W/stride]."""

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = projection_shortcut(in_planes, self.expansion * planes, stride)

    @property
    def final_bn(self):
        """The BN whose output (plus shortcut) enters the block's last ReLU."""
        return self.bn3

    def forward(self, x):
        """Return the activated output, plus the pre-ReLU sum when `is_last`."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return block_output(out + self.shortcut(x), self.is_last)


class ResNet(nn.Module):
    """ImageNet-style ResNet with a 3x3 stride-1 stem for [B, 3, 32, 32] inputs; four stages of 64-512 planes."""

    def __init__(self, block, num_blocks, num_classes=10, zero_init_residual=False):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self._initialize_weights(zero_init_residual)

    def _initialize_weights(self, zero_init_residual):
        """He-normal (fan-out) convolutions, unit BN; optionally zero the last BN of every residual branch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.final_bn.weight, 0)

    def _make_layer(self, block, planes, num_blocks, stride):
        """A stage of `num_blocks` blocks, the first one strided."""
        layers = []
        for i in range(num_blocks):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1, i == num_blocks - 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def stages(self):
        """The four residual stages in forward order."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def get_feat_modules(self):
        """Modules that produce the intermediate features, in forward order."""
        return nn.ModuleList([self.conv1, self.bn1, *self.stages()])

    def get_bn_before_relu(self):
        """Last BN of each stage, whose output feeds the stage's final ReLU."""
        return [stage[-1].final_bn for stage in self.stages()]

    def get_stage_channels(self):
        """Channels of the stem and of each stage output: the widths of feats[:-1] (mdistiller omits the stem here)."""
        return [self.conv1.out_channels] + [stage[-1].final_bn.num_features for stage in self.stages()]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [stem, stage1..4, pooled] (pre-ReLU stages if `preact`)."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for stage in self.stages():
            out, stage_preact = stage(out)
            feats.append(out)
            preacts.append(stage_preact)
        pooled = self.avgpool(out).flatten(1)
        logits = self.linear(pooled)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [pooled], logits


def ResNet18(**kwargs):
    """ResNet-18: basic blocks 2-2-2-2."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def ResNet34(**kwargs):
    """ResNet-34: basic blocks 3-4-6-3."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("ResNet50")
def ResNet50(**kwargs):
    """ResNet-50: bottlenecks 3-4-6-3."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def ResNet101(**kwargs):
    """ResNet-101: bottlenecks 3-4-23-3."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def ResNet152(**kwargs):
    """ResNet-152: bottlenecks 3-8-36-3."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)
