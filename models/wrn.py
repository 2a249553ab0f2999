"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), RepDistiller layout."""
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from .registry import register_model

__all__ = ["WideResNet", "wrn", "wrn_40_2", "wrn_40_1", "wrn_16_2", "wrn_16_1"]


class BasicBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv twice): [B, in_planes, H, W] -> [B, out_planes, H/stride, W/stride]."""

    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x):
        """Residual sum; a width-changing block projects the activated input, otherwise the raw input is added."""
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equalInOut else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of `nb_layers` blocks, the first one strided and changing width."""

    def __init__(self, nb_layers, in_planes, out_planes, block, stride, dropRate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)
        ])

    def forward(self, x):
        """Run the stage's blocks in order."""
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for [B, 3, 32, 32] inputs: 3x3 stem, three stages of 16k-32k-64k planes."""

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"WideResNet depth {depth} invalid: use 6n+4 (16, 22, 28, 40, ...)")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], BasicBlock, 1, dropRate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], BasicBlock, 2, dropRate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], BasicBlock, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        self._initialize_weights()

    def _initialize_weights(self):
        """He-normal (fan-out) convolutions, unit BN, zero classifier bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_feat_modules(self):
        """Modules that produce the intermediate features, in forward order."""
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self):
        """The BN that first normalises each stage's output (next stage's entry BN, or the final BN)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def get_stage_channels(self):
        """Channels of the stem and of each stage output: the widths of feats[:-1] (mdistiller's list)."""
        return [self.conv1.out_channels] + [stage.layer[-1].conv2.out_channels
                                            for stage in (self.block1, self.block2, self.block3)]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [stem, stage1..3, pooled].

        With `preact` the stage outputs are passed through get_bn_before_relu()'s BNs, as RepDistiller does
        (in train mode this is a second BN call that also updates those BNs' running statistics).
        """
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.avg_pool2d(self.relu(self.bn1(f3)), 8).view(-1, self.nChannels)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        stage_feats = [f1, f2, f3]
        if preact:
            stage_feats = [bn(f) for bn, f in zip(self.get_bn_before_relu(), stage_feats)]
        return [f0, *stage_feats, pooled], logits


def wrn(**kwargs):
    """WideResNet with the given depth, num_classes, widen_factor, dropRate."""
    return WideResNet(**kwargs)


@register_model("wrn_40_2")
def wrn_40_2(**kwargs):
    """WRN-40-2."""
    return WideResNet(depth=40, widen_factor=2, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(**kwargs):
    """WRN-40-1."""
    return WideResNet(depth=40, widen_factor=1, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(**kwargs):
    """WRN-16-2."""
    return WideResNet(depth=16, widen_factor=2, **kwargs)


@register_model("wrn_16_1")
def wrn_16_1(**kwargs):
    """WRN-16-1."""
    return WideResNet(depth=16, widen_factor=1, **kwargs)
