"""CIFAR VGG without FC stack (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015), RepDistiller layout."""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .init import init_conv_bn_linear

__all__ = ["VGG", "vgg8", "vgg8_bn", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
           "vgg19", "vgg19_bn"]

cfg = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


class VGG(nn.Module):
    """Five conv blocks (each ends pre-ReLU) separated by max-pools, global average pool, one linear layer.

    A [B, 3, 32, 32] input gives blocks at 32, 16, 8, 4, 4 pixels; the fourth pool only runs for 64-pixel inputs.
    """

    def __init__(self, cfg, batch_norm=False, num_classes=1000):
        super().__init__()
        in_channels = [3] + [block[-1] for block in cfg[:-1]]
        self.block0 = self._make_layers(cfg[0], batch_norm, in_channels[0])
        self.block1 = self._make_layers(cfg[1], batch_norm, in_channels[1])
        self.block2 = self._make_layers(cfg[2], batch_norm, in_channels[2])
        self.block3 = self._make_layers(cfg[3], batch_norm, in_channels[3])
        self.block4 = self._make_layers(cfg[4], batch_norm, in_channels[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        init_conv_bn_linear(self)

    @staticmethod
    def _make_layers(cfg, batch_norm=False, in_channels=3):
        """3x3 conv (+BN) + ReLU per width in `cfg`, dropping the block's final ReLU."""
        layers = []
        for width in cfg:
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        return nn.Sequential(*layers[:-1])

    def get_feat_modules(self):
        """Blocks and pools in forward order."""
        return nn.ModuleList([self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
                              self.block3, self.pool3, self.block4, self.pool4])

    def get_bn_before_relu(self):
        """Last layer (the BN in the _bn variants) of blocks 1-4."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def get_stage_channels(self):
        """Channels of block0..block4, the widths of feats[:-1] (mdistiller's list)."""
        blocks = (self.block0, self.block1, self.block2, self.block3, self.block4)
        return [[m for m in block if isinstance(m, nn.Conv2d)][-1].out_channels for block in blocks]

    def forward(self, x, is_feat=False, preact=False):
        """Logits [B, num_classes]; with `is_feat`, also [block0..4, pooled] (blocks 1-4 pre-ReLU if `preact`)."""
        pools = [self.pool0, self.pool1, self.pool2, self.pool3 if x.shape[2] == 64 else None]
        blocks = [self.block1, self.block2, self.block3, self.block4]
        out = F.relu(self.block0(x))
        feats, preacts = [out], [out]
        for pool, block in zip(pools, blocks):
            block_preact = block(out if pool is None else pool(out))
            out = F.relu(block_preact)
            preacts.append(block_preact)
            feats.append(out)
        pooled = self.pool4(out).flatten(1)
        logits = self.classifier(pooled)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [pooled], logits


def vgg8(**kwargs):
    """VGG-8 (configuration 'S'), no BN."""
    return VGG(cfg["S"], **kwargs)


@register_model("vgg8")
def vgg8_bn(**kwargs):
    """VGG-8 (configuration 'S') with BN."""
    return VGG(cfg["S"], batch_norm=True, **kwargs)


def vgg11(**kwargs):
    """VGG-11 (configuration 'A'), no BN."""
    return VGG(cfg["A"], **kwargs)


@register_model("vgg11")
def vgg11_bn(**kwargs):
    """VGG-11 (configuration 'A') with BN."""
    return VGG(cfg["A"], batch_norm=True, **kwargs)


def vgg13(**kwargs):
    """VGG-13 (configuration 'B'), no BN."""
    return VGG(cfg["B"], **kwargs)


@register_model("vgg13")
def vgg13_bn(**kwargs):
    """VGG-13 (configuration 'B') with BN."""
    return VGG(cfg["B"], batch_norm=True, **kwargs)


def vgg16(**kwargs):
    """VGG-16 (configuration 'D'), no BN."""
    return VGG(cfg["D"], **kwargs)


@register_model("vgg16")
def vgg16_bn(**kwargs):
    """VGG-16 (configuration 'D') with BN."""
    return VGG(cfg["D"], batch_norm=True, **kwargs)


def vgg19(**kwargs):
    """VGG-19 (configuration 'E'), no BN."""
    return VGG(cfg["E"], **kwargs)


@register_model("vgg19")
def vgg19_bn(**kwargs):
    """VGG-19 (configuration 'E') with BN."""
    return VGG(cfg["E"], batch_norm=True, **kwargs)
