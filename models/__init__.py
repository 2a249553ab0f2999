"""Every network by its RepDistiller / CTKD / SemCKD name: `model_dict[name](num_classes=N)`; torchvision:<name> and
timm:<name> build those libraries' networks (models/external.py)."""
from . import registry
from .external import InputSizes, ModelNames, check_model_name
from .registry import register_model
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, ShuffleNetv1, ShuffleNetv2  # noqa: F401  CIFAR
from . import resnet_imagenet, vgg_imagenet, mobilenetv2_imagenet, shufflenetv2_imagenet, mobilenetv1  # noqa: F401  ImageNet

model_dict = ModelNames(registry.model_dict)  # the registered names, plus torchvision:<name> and timm:<name>
input_size = InputSizes(registry.input_size)  # side in px; for torchvision:/timm: its fixed side, or None (any)
build_model = model_dict.build

__all__ = ["model_dict", "input_size", "build_model", "register_model", "check_model_name"]
