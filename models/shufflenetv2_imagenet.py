"""ImageNet ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


def channel_shuffle(x, groups):
    """Interleave the channels of `groups` equal groups."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


def depthwise_conv(channels, stride):
    """3x3 depthwise convolution with padding 1 and no bias."""
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit: split (or duplicate when striding), transform one half, concatenate, shuffle."""

    def __init__(self, inp, oup, stride):
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features * 2:
            raise ValueError("a stride-1 unit needs inp == oup")
        if stride > 1:
            self.branch1 = nn.Sequential(
                depthwise_conv(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            depthwise_conv(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward_with_preact(self, x):
        """Unit output and the transformed half before its final ReLU (oup/2 channels, unshuffled)."""
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
        else:
            kept, transformed = self.branch1(x), x
        preact = self.branch2[:-1](transformed)
        out = torch.cat((kept, F.relu(preact)), dim=1)
        return channel_shuffle(out, 2), preact

    def forward(self, x):
        return self.forward_with_preact(x)[0]


class ShuffleNetV2(nn.Module):
    """torchvision-layout ShuffleNetV2 whose forward can also return the stem, three stage outputs and the vector.

    With `preact`, a stage feature is its last unit's transformed half before the ReLU, with half the stage's
    channels, as in SemCKD/CTKD. Their unit applies that ReLU in place, so their "preact" tensor actually holds
    the activated values; this one is the real pre-activation.
    """

    def __init__(self, stages_repeats, stages_out_channels, num_classes=1000):
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        input_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, input_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(input_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats,
                                                  stages_out_channels[1:]):
            units = [InvertedResidual(input_channels, output_channels, 2)]
            units += [InvertedResidual(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def stages(self):
        """The three shuffle stages, shallow to deep."""
        return [self.stage2, self.stage3, self.stage4]

    def get_feat_modules(self):
        """Stem, stages and the final 1x1 convolution."""
        return nn.ModuleList([self.conv1, self.maxpool, *self.stages(), self.conv5])

    def get_bn_before_relu(self):
        """BatchNorm producing each stage's pre-activation feature (the peers' version indexes a unit and fails)."""
        return [stage[-1].branch2[-2] for stage in self.stages()]

    @staticmethod
    def _run_stage(stage, x):
        for unit in stage[:-1]:
            x = unit(x)
        return stage[-1].forward_with_preact(x)

    def forward(self, x, is_feat=False, preact=False):
        """Logits; with `is_feat`, ([stem, stage2..4, pooled vector], logits)."""
        x = self.maxpool(self.conv1(x))
        feats = [x]
        for stage in self.stages():
            x, pre = self._run_stage(stage, x)
            feats.append(pre if preact else x)
        x = self.conv5(x).mean([2, 3])
        feats.append(x)
        logits = self.fc(x)
        return (feats, logits) if is_feat else logits


@register_model("shufflenet_v2_x0_5", size=224)
def shufflenet_v2_x0_5(**kwargs):
    """ShuffleNetV2 0.5x."""
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], **kwargs)


@register_model("ShuffleV2_Imagenet", size=224)
def shufflenet_v2_x1_0(**kwargs):
    """ShuffleNetV2 1.0x."""
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], **kwargs)


@register_model("shufflenet_v2_x2_0", size=224)
def shufflenet_v2_x2_0(**kwargs):
    """ShuffleNetV2 2.0x."""
    return ShuffleNetV2([4, 8, 4], [24, 244, 488, 976, 2048], **kwargs)
