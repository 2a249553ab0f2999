"""ImageNet VGG with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015)."""
import torch
import torch.nn as nn

from .registry import register_model
from .init import init_conv_bn_linear

CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}

# A feature is taken after this many modules of `features` (then one after the last pool, then the pooled vector).
# CTKD slices `features` at [0, 2, 4, 7, 10] ("A") and [0, 3, 6, 9, 12] ("B"); slices that end on a BatchNorm are
# overwritten by the in-place ReLU that follows, so CTKD's features are in effect the post-ReLU maps tapped here.
FEATURE_TAPS = {"A": (3, 4, 7, 11), "B": (3, 6, 10, 13)}


def make_layers(config):
    """Conv-BN-ReLU for each width in `config`, a 2x2 max-pool for each "M"; torchvision's `features` indices."""
    layers = []
    in_channels = 3
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.ModuleList(layers)


class VGG(nn.Module):
    """torchvision-layout VGG-BN whose forward can also return four tapped maps, the last pooled map and the vector.

    `taps` are module counts into `features` after which a feature is recorded. CTKD's VGG has no pre-activation
    features, so `preact` is accepted and ignored.
    """

    def __init__(self, features, taps, num_classes=1000):
        super().__init__()
        self.features = features
        self.taps = tuple(taps)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        init_conv_bn_linear(self)

    def get_feat_modules(self):
        """The convolutional trunk, module by module."""
        return nn.ModuleList(list(self.features))

    def get_bn_before_relu(self):
        """For features 1-4 (the ones OFD uses), the last BatchNorm before that feature's tap."""
        ends = [*self.taps[1:], len(self.features)]
        return [self._last_bn_before(end) for end in ends]

    def _last_bn_before(self, end):
        return [m for m in self.features[:end] if isinstance(m, nn.BatchNorm2d)][-1]

    def forward(self, x, is_feat=False, preact=False):
        """Logits; with `is_feat`, ([tap1..4, last pooled map, flattened vector], logits)."""
        feats = []
        for count, module in enumerate(self.features, start=1):
            x = module(x)
            if count in self.taps:
                feats.append(x)
        feats.append(x)
        x = torch.flatten(self.avgpool(x), 1)
        feats.append(x)
        logits = self.classifier(x)
        return (feats, logits) if is_feat else logits


def _vgg(config, **kwargs):
    return VGG(make_layers(CONFIGS[config]), FEATURE_TAPS[config], **kwargs)


@register_model("vgg11_imagenet", size=224)
def vgg11_bn(**kwargs):
    """VGG-11 with batch norm (configuration "A")."""
    return _vgg("A", **kwargs)


@register_model("vgg13_imagenet", size=224)
def vgg13_bn(**kwargs):
    """VGG-13 with batch norm (configuration "B")."""
    return _vgg("B", **kwargs)
