"""CIFAR ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018), RepDistiller layout."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from .registry import register_model

__all__ = ["ShuffleNetV2", "ShuffleV2", "configs"]

configs = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleBlock(nn.Module):
    """Channel shuffle: [B, C, H, W] viewed as [B, g, C/g, H, W], groups interleaved, back to [B, C, H, W]."""

    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        """Interleave the channels of the `groups` groups."""
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class SplitBlock(nn.Module):
    """Split [B, C, H, W] along channels into the first int(C * ratio) channels and the rest."""

    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        """Return the two channel slices."""
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlock(nn.Module):
    """Stride-1 unit: keep one channel half, transform the other (1x1 - dw 3x3 - 1x1), concatenate, shuffle."""

    def __init__(self, in_channels, split_ratio=0.5, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1,
                               groups=in_channels, bias=False)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        """Return the shuffled output, plus the unshuffled pre-ReLU concatenation when `is_last`."""
        kept, transformed = self.split(x)
        out = F.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        branch_preact = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([kept, F.relu(branch_preact)], 1))
        if self.is_last:
            return out, torch.cat([kept, branch_preact], 1)
        return out


class DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, each giving out_channels / 2, concatenated and shuffled."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1,
                               groups=mid_channels, bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        """[B, in_channels, H, W] -> [B, out_channels, H/2, W/2]."""
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 of size `net_size` (a key of `configs`) for [B, 3, 32, 32] inputs, 1x1 stem with 24 planes."""

    def __init__(self, net_size, num_classes=10):
        super().__init__()
        if net_size not in configs:
            raise UserError(f"ShuffleNetV2 net_size {net_size!r} unknown; use one of {sorted(configs)}")
        out_channels = configs[net_size]["out_channels"]
        num_blocks = configs[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels, num_blocks):
        """A DownBlock followed by `num_blocks` stride-1 units."""
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels, is_last=(i == num_blocks - 1)) for i in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        """Modules that produce the intermediate features, in forward order."""
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        """Unsupported, as in RepDistiller: ShuffleNetV2 cannot be the teacher of the Overhaul ('abound') loss."""
        raise UserError("ShuffleV2 is not supported as teacher for --distill abound; pick another teacher")

    def get_stage_channels(self):
        """Channels of the stem and of each stage output, the widths of feats[:-1] (mdistiller's list)."""
        return [self.bn1.num_features] + [2 * stage[-1].conv3.out_channels
                                          for stage in (self.layer1, self.layer2, self.layer3)]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [stem, stage1..3, pooled] (pre-ReLU stages if `preact`)."""
        out = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [out], [out]
        for stage in (self.layer1, self.layer2, self.layer3):
            out, stage_preact = stage(out)
            feats.append(out)
            preacts.append(stage_preact)
        out = F.relu(self.bn2(self.conv2(out)))
        pooled = F.avg_pool2d(out, 4).flatten(1)
        logits = self.linear(pooled)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [pooled], logits


@register_model("ShuffleV2")
def ShuffleV2(**kwargs):
    """ShuffleNetV2 1x: stages of 116-232-464 channels, 1024-channel head."""
    return ShuffleNetV2(net_size=1, **kwargs)
