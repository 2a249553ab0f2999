"""ImageNet MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", 2017)."""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

# (input channels, output channels, stride) of the 13 depthwise-separable layers after the stem.
DEPTHWISE_LAYERS = [
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1),
]

# Stages as [start, end) indices into `model`; each ends at the last layer before a resolution change.
STAGES = [(1, 4), (4, 6), (6, 12), (12, 14)]


def conv_bn(inp, oup, stride):
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def conv_dw(inp, oup, stride):
    """Depthwise 3x3 then pointwise 1x1, each followed by BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """mdistiller's ImageNet MobileNetV1 (same state_dict keys) under this repo's forward contract.

    mdistiller returns (logits, {"feats", "preact_feats", "pooled_feat"}); here `is_feat` gives
    ([stem, stage1..4, pooled vector], logits), where stages 1-4 are mdistiller's four "feats" (128, 256, 512 and
    1024 channels at 1/4 to 1/32 resolution, matching a ResNet's stages) and the stem is the first 3x3 conv
    (32 channels, 1/2 resolution). `preact` swaps stages 1-4 for mdistiller's "preact_feats". mdistiller
    ignores `num_classes` (always 1000); here it sizes `fc`. The final 7x7 average pool needs 224x224 input.
    """

    def __init__(self, num_classes=1000):
        super().__init__()
        self.model = nn.Sequential(
            conv_bn(3, 32, 2),
            *[conv_dw(inp, oup, stride) for inp, oup, stride in DEPTHWISE_LAYERS],
            nn.AvgPool2d(7),
        )
        self.fc = nn.Linear(1024, num_classes)

    def stages(self):
        """The four stages as slices of `model`, shallow to deep."""
        return [self.model[start:end] for start, end in STAGES]

    def get_feat_modules(self):
        """The convolutional trunk, layer by layer."""
        return nn.ModuleList(list(self.model))

    def get_bn_before_relu(self):
        """BatchNorm before the last ReLU of each stage (mdistiller's list)."""
        return [self.model[end - 1][-2] for _, end in STAGES]

    def get_stage_channels(self):
        """Channels of the four stage features (mdistiller's method)."""
        return [128, 256, 512, 1024]

    @staticmethod
    def _run_stage(stage, x):
        """Return the stage output and its last layer's output before the final ReLU."""
        for layer in stage[:-1]:
            x = layer(x)
        pre = stage[-1][:-1](x)
        return F.relu(pre), pre

    def forward(self, x, is_feat=False, preact=False):
        """Logits; with `is_feat`, ([stem, stage1..4, pooled vector], logits)."""
        x = self.model[0](x)
        feats = [x]
        for stage in self.stages():
            x, pre = self._run_stage(stage, x)
            feats.append(pre if preact else x)
        x = self.model[-1](x).flatten(1)
        feats.append(x)
        logits = self.fc(x)
        return (feats, logits) if is_feat else logits


@register_model("MobileNetV1", size=224)
def mobilenetv1(**kwargs):
    """MobileNetV1 (width 1.0), the student of mdistiller's ResNet50 -> MobileNetV1 ImageNet pair."""
    return MobileNetV1(**kwargs)
