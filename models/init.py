"""Weight initialisation shared by the MobileNetV2 and VGG families."""
from torch import nn


def init_conv_bn_linear(model):
    """He-normal (fan-out) convolutions with zero bias, unit/zero BN, N(0, 0.01) linear layers with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
