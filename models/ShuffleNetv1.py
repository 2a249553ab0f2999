"""CIFAR ShuffleNet (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices", CVPR 2018), RepDistiller layout."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from .registry import register_model

__all__ = ["ShuffleNet", "ShuffleV1"]


class ShuffleBlock(nn.Module):
    """Channel shuffle: [B, C, H, W] viewed as [B, g, C/g, H, W], groups interleaved, back to [B, C, H, W]."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        """Interleave the channels of the `groups` groups."""
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1 unit; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_planes, out_planes, stride, groups, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = int(out_planes / 4)
        first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=first_groups)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x):
        """Return the activated output, plus the pre-ReLU merge when `is_last`."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ShuffleNet(nn.Module):
    """ShuffleNet for [B, 3, 32, 32] inputs: 1x1 stem with 24 planes, three stages of cfg['out_planes']."""

    def __init__(self, cfg, num_classes=10):
        super().__init__()
        out_planes, num_blocks, groups = cfg["out_planes"], cfg["num_blocks"], cfg["groups"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes, num_blocks, groups):
        """A stage whose first, strided unit concatenates its input to reach `out_planes`."""
        layers = []
        for i in range(num_blocks):
            concatenated = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - concatenated, stride=2 if i == 0 else 1,
                                     groups=groups, is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        """Modules that produce the intermediate features, in forward order."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        """Unsupported, as in RepDistiller: ShuffleNet cannot be the teacher of the Overhaul ('abound') loss."""
        raise UserError("ShuffleV1 is not supported as teacher for --distill abound; pick another teacher")

    def get_stage_channels(self):
        """Channels of the stem and of each stage output, the widths of feats[:-1] (mdistiller has none)."""
        def width(unit):
            return unit.conv3.out_channels + (unit.conv1.in_channels if unit.stride == 2 else 0)
        return [self.bn1.num_features] + [width(stage[-1]) for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [stem, stage1..3, pooled] (pre-ReLU stages if `preact`)."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3):
            out, stage_preact = stage(out)
            feats.append(out)
            preacts.append(stage_preact)
        pooled = F.avg_pool2d(out, 4).flatten(1)
        logits = self.linear(pooled)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [pooled], logits


@register_model("ShuffleV1")
def ShuffleV1(**kwargs):
    """ShuffleNet 1x, g=3: stages of 240-480-960 planes with 4-8-4 units."""
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, **kwargs)
