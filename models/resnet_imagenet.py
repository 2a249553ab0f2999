"""ImageNet ResNet, ResNeXt and Wide ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


def conv3x3(in_planes, out_planes, stride=1, groups=1):
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut; torchvision's parameter names."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def last_bn(self):
        """The BatchNorm whose output, plus the shortcut, enters the block's final ReLU."""
        return self.bn2

    def pre_activation(self, x):
        """Residual sum before the final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x):
        return self.relu(self.pre_activation(x))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck, stride on the 3x3 (ResNet v1.5); `groups`/`base_width` give ResNeXt and WRN."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self):
        """The BatchNorm whose output, plus the shortcut, enters the block's final ReLU."""
        return self.bn3

    def pre_activation(self, x):
        """Residual sum before the final ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x):
        return self.relu(self.pre_activation(x))


class ResNet(nn.Module):
    """torchvision-layout ImageNet ResNet whose forward can also return the stem, stage and pooled features.

    `multiplier` scales the channel width of the four stages (the stem stays at 64 channels). SemCKD/CTKD accept
    the same argument but ignore it; here it takes effect.
    """

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 multiplier=1):
        super().__init__()
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64 * multiplier, layers[0])
        self.layer2 = self._make_layer(block, 128 * multiplier, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256 * multiplier, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512 * multiplier, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * multiplier * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.last_bn().weight, 0)

    def stages(self):
        """The four residual stages, shallow to deep."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def get_feat_modules(self):
        """Modules that produce the intermediate features (stem and the four stages)."""
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool, *self.stages()])

    def get_bn_before_relu(self):
        """Last BatchNorm of each stage, whose output (plus shortcut) is the pre-activation stage feature."""
        return [stage[-1].last_bn() for stage in self.stages()]

    @staticmethod
    def _run_stage(stage, x):
        """Return the stage output and the pre-ReLU residual sum of its last block."""
        for block in stage[:-1]:
            x = block(x)
        pre = stage[-1].pre_activation(x)
        return F.relu(pre), pre

    def forward(self, x, is_feat=False, preact=False):
        """Logits; with `is_feat`, ([stem, stage1..4, pooled], logits). `preact` gives pre-ReLU stage outputs."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = [x]
        for stage in self.stages():
            x, pre = self._run_stage(stage, x)
            feats.append(pre if preact else x)
        x = torch.flatten(self.avgpool(x), 1)
        feats.append(x)
        logits = self.fc(x)
        return (feats, logits) if is_feat else logits


@register_model("ResNet18", size=224)
def resnet18(**kwargs):
    """ResNet-18."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model("ResNet18Double", size=224)
def resnet18x2(**kwargs):
    """Exactly ResNet-18: SemCKD/CTKD pass a width multiplier of 2 that their ResNet ignores.

    Kept as the peers build it so their `ResNet18Double` checkpoints load; the widened net is `ResNet18Double_wide`.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model("ResNet18Double_wide", size=224)
def resnet18x2_wide(**kwargs):
    """ResNet-18 with every stage twice as wide (128-1024 channels), what `ResNet18Double` was meant to be."""
    return ResNet(BasicBlock, [2, 2, 2, 2], multiplier=2, **kwargs)


@register_model("ResNet34", size=224)
def resnet34(**kwargs):
    """ResNet-34."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("resnet34x4", size=224)
def resnet34x4(**kwargs):
    """Exactly ResNet-34: SemCKD/CTKD pass a width multiplier of 4 that their ResNet ignores.

    Kept as the peers build it so their `resnet34x4` checkpoints load; the widened net is `resnet34x4_wide`.
    """
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("resnet34x4_wide", size=224)
def resnet34x4_wide(**kwargs):
    """ResNet-34 with every stage four times as wide (256-2048 channels, about 340M parameters)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], multiplier=4, **kwargs)


@register_model("ResNet50_Imagenet", size=224)
def resnet50(**kwargs):
    """ResNet-50 (SemCKD's ImageNet `ResNet50`; that name here is RepDistiller's CIFAR net)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


@register_model("resnext50_32x4d", size=224)
def resnext50_32x4d(**kwargs):
    """ResNeXt-50 32x4d (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks")."""
    return ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4, **kwargs)


@register_model("wrn_50_2", size=224)
def wide_resnet50_2(**kwargs):
    """Wide ResNet-50-2 (Zagoruyko & Komodakis, "Wide Residual Networks"): bottlenecks twice as wide."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=128, **kwargs)
