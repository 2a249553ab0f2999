"""Every network by its RepDistiller / CTKD / SemCKD name: `model_dict[name](num_classes=N)`."""
from .registry import build_model, input_size, model_dict, register_model
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, ShuffleNetv1, ShuffleNetv2  # noqa: F401  CIFAR
from . import resnet_imagenet, vgg_imagenet, mobilenetv2_imagenet, shufflenetv2_imagenet, mobilenetv1  # noqa: F401  ImageNet

__all__ = ["model_dict", "input_size", "build_model", "register_model"]
