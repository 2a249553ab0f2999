"""Networks of torchvision and timm by name (`torchvision:resnet18`, `timm:resnet10t`) as teachers and students.

`build_external(name, num_classes)` builds the library's own network (random weights: torchvision with weights=None,
timm with pretrained=False) and gives it this repository's forward, `model(x, is_feat=False, preact=False)`:
logits, or with is_feat `(feats, logits)`, feats = [stem, stage 1..n maps [B, C, H, W], pooled [B, D]]. The network
stays the library's class (a subclass adds only that forward), so its state_dict keys are the library's: a file of
`torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)` loads as it is, and a checkpoint of this
repository loads back into the library's model.

`ModelNames` and `InputSizes` are the views models/__init__.py exports as `model_dict` and `input_size`: the
registered names (iterated and listed, as before) plus these prefixed names (accepted by `in` and `[]`).
"""
import functools
from collections.abc import Mapping

from torch import nn

from helper.errors import UserError

LIBRARIES = ("torchvision", "timm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# torchvision families whose layout the feature forward knows: ResNet's stem and layer1..4, or a `features` stack of
# convolutional blocks read at each resolution. Other torchvision networks (ViT, Swin, GoogLeNet, ...) are refused.
TORCHVISION_RESNETS = ("resnet", "resnext", "wide_resnet")
TORCHVISION_FEATURE_STACKS = ("vgg", "alexnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext",
                              "densenet")


def split_name(name):
    """'timm:resnet10t' -> ('timm', 'resnet10t'); (None, name) for a name without a library prefix."""
    library, sep, inner = name.partition(":") if isinstance(name, str) else ("", "", name)
    return (library, inner) if sep and library in LIBRARIES else (None, name)


def is_external(name):
    return split_name(name)[0] is not None


def _import(library):
    try:
        if library == "timm":
            import timm
            return timm
        import torchvision
        return torchvision
    except ImportError:
        raise UserError(f"{library}:<name> networks need the {library} package; run bash scripts/setup.sh "
                        f"(requirements.txt) or pip install {library}") from None


def _torchvision_family(inner):
    if inner.startswith(TORCHVISION_RESNETS):
        return "resnet"
    if inner.startswith(TORCHVISION_FEATURE_STACKS):
        return "features"
    return None


def external_problem(name):
    """Why `name` ('torchvision:x' / 'timm:x') cannot be built here, in a few words, or None when it can."""
    library, inner = split_name(name)
    module = _import(library)
    if library == "timm":
        if not module.is_model(inner.split(".")[0]):
            return f"timm has no model {inner!r} (timm.list_models('*{inner[:6]}*') lists similar names)"
        return None
    if inner not in module.models.list_models(module=module.models):
        return f"torchvision has no classification model {inner!r} (torchvision.models.list_models() lists them)"
    if _torchvision_family(inner) is None:
        return (f"torchvision:{inner} has no feature layout this repository reads (supported: "
                f"{', '.join(f'{f}*' for f in TORCHVISION_RESNETS + TORCHVISION_FEATURE_STACKS)}); use its timm: "
                "counterpart or add it to models/")
    return None


def check_model_name(name, flag):
    """One line naming `flag` unless `name` is a registered model or a buildable torchvision:/timm: network."""
    from models import model_dict  # the registered names are filled when models/ is imported
    if is_external(name):
        problem = external_problem(name)
        if problem is not None:
            raise UserError(f"{flag} {name}: {problem}")
    elif name not in model_dict:
        raise UserError(f"unknown {flag} {name!r}; choose one of: {', '.join(sorted(model_dict))}, or "
                        "torchvision:<name> / timm:<name>")


# ---- the library's input ------------------------------------------------------------------------------------------
def library_input(name):
    """(side in px, mean, std) of the library's pretrained configuration for `name`: torchvision's DEFAULT weights'
    transforms (crop size), timm's pretrained_cfg (input_size); ImageNet's 224 px where the library records none."""
    library, inner = split_name(name)
    module = _import(library)
    if library == "timm":
        cfg = module.models.get_pretrained_cfg(inner)
        if cfg is None:
            return 224, IMAGENET_MEAN, IMAGENET_STD
        return int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std)
    try:
        transforms = module.models.get_model_weights(inner).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    return int(transforms.crop_size[0]), tuple(transforms.mean), tuple(transforms.std)


def fixed_input_size(name):
    """The input side a torchvision:/timm: network is built for when it accepts no other (timm's fixed_input_size:
    ViT, Swin ...), else None: the network takes the size it is given (adaptive pooling)."""
    library, inner = split_name(name)
    if library == "timm":
        cfg = _import("timm").models.get_pretrained_cfg(inner.split(".")[0])
        return int(cfg.input_size[-1]) if cfg is not None and cfg.fixed_input_size else None
    return None


# ---- building -----------------------------------------------------------------------------------------------------
def build_external(name, num_classes, **kwargs):
    """The library's network `name` for `num_classes` classes, random weights, with this repository's forward;
    `kwargs` go to the library's constructor (e.g. img_size=32 for a timm ViT)."""
    problem = external_problem(name)
    if problem is not None:
        raise UserError(f"model {name}: {problem}")
    library, inner = split_name(name)
    module = _import(library)
    if library == "timm":
        net = module.create_model(inner, pretrained=False, num_classes=num_classes, **kwargs)
        mixin = TimmForward
    else:
        net = module.models.get_model(inner, weights=None, num_classes=num_classes, **kwargs)
        mixin = TorchvisionResNetForward if _torchvision_family(inner) == "resnet" else TorchvisionStackForward
    net.__class__ = _with_forward(mixin, type(net))
    return net


@functools.lru_cache(maxsize=None)
def _with_forward(mixin, library_class):
    """`library_class` with `mixin`'s forward first in its MRO; one class per pair, so instances compare as usual."""
    return type(library_class.__name__, (mixin, library_class),
                {"__module__": library_class.__module__, "__doc__": library_class.__doc__})


def last_linear(net):
    """The last nn.Linear of `net` in module order: the classifier reading the pooled vector."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__} has no nn.Linear classifier; its pooled feature cannot be read")
    return linears[-1]


class HookedForward:
    """Feature forward by hooks: the library's own forward runs once, the outputs of `feature_modules()` and the input
    of the classifier (the pooled vector) are kept. `preact` is accepted and gives the same maps: these networks
    expose no pre-activation outputs."""

    def feature_modules(self):
        raise NotImplementedError

    def forward(self, x, is_feat=False, preact=False):
        """x [B, 3, H, W] -> logits [B, K]; with is_feat ([stem, stage maps..., pooled [B, D]], logits)."""
        if not is_feat:
            return super().forward(x)
        maps, pooled = [], []
        handles = [m.register_forward_hook(lambda _m, _i, out: maps.append(out)) for m in self.feature_modules()]
        handles.append(last_linear(self).register_forward_pre_hook(lambda _m, args: pooled.append(args[0])))
        try:
            logits = super().forward(x)
        finally:
            for handle in handles:
                handle.remove()
        return maps + pooled[-1:], logits


class TorchvisionResNetForward(HookedForward):
    """torchvision's ResNet, ResNeXt and Wide ResNet (He et al., CVPR 2016): stem = conv1-bn1-relu (before the max
    pool), stages = layer1..4, pooled = avgpool's flattened output."""

    def feature_modules(self):
        return [self.relu, self.layer1, self.layer2, self.layer3, self.layer4]


def downsamples(module):
    """Whether `module` holds a convolution or pooling with a stride above 1."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if isinstance(m.stride, tuple) else (m.stride,)
            if any(s > 1 for s in stride):
                return True
    return False


class TorchvisionStackForward(HookedForward):
    """torchvision networks built as a `features` stack (VGG, AlexNet, MobileNetV2/V3, EfficientNet, ConvNeXt,
    DenseNet): the stack is cut before each block that downsamples, and each piece's last output is a feature map;
    the first piece plays the stem (for ConvNeXt, the stem with the first stage). pooled = what the last nn.Linear
    reads."""

    def feature_modules(self):
        blocks = list(self.features.children())
        ends = [i - 1 for i in range(1, len(blocks)) if downsamples(blocks[i])] + [len(blocks) - 1]
        return [blocks[i] for i in ends if i >= 0]


class TimmForward:
    """timm networks: the maps of every level of the model's feature_info (forward_intermediates, or hooks on the
    feature_info modules for models without it); the first level plays the stem (a stem for ResNet, EfficientNet,
    RegNet; the first stage for ConvNeXt, the first block for ViT). pooled = forward_head(pre_logits=True); logits =
    the classifier applied to it. `preact` is accepted and gives the same maps."""

    def forward(self, x, is_feat=False, preact=False):
        """x [B, 3, H, W] -> logits [B, K]; with is_feat ([level maps [B, C, H', W']..., pooled [B, D]], logits)."""
        if not is_feat:
            return super().forward(x)
        if hasattr(self, "forward_intermediates"):
            final, maps = self.forward_intermediates(x)
        else:
            final, maps = self._hooked_features(x)
        pooled = self.forward_head(final, pre_logits=True)
        classifier = self.get_classifier()
        logits = classifier(pooled) if isinstance(classifier, nn.Linear) else self.forward_head(final)
        return list(maps) + [pooled], logits

    def _hooked_features(self, x):
        named = dict(self.named_modules())
        names = [info["module"] for info in self.feature_info]
        missing = [n for n in names if n not in named]
        if missing:
            raise UserError(f"timm {type(self).__name__}: feature_info names modules it does not have ({missing[0]}); "
                            "its feature maps cannot be read")
        maps = []
        handles = [named[n].register_forward_hook(lambda _m, _i, out: maps.append(out)) for n in names]
        try:
            final = self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        return final, maps


# ---- the views models/__init__.py exports --------------------------------------------------------------------------
class ModelNames(Mapping):
    """`model_dict`: the registered networks (`registered`, a live Registry: iterating, len and listings show only
    these) plus torchvision:<name> and timm:<name>, which `in` and `[]` accept when the library has the network."""

    def __init__(self, registered):
        self.registered = registered

    def __getitem__(self, name):
        if is_external(name):
            return functools.partial(build_external, name)
        return self.registered[name]

    def __contains__(self, name):
        if is_external(name):
            return external_problem(name) is None
        return name in self.registered

    def __iter__(self):
        return iter(self.registered)

    def __len__(self):
        return len(self.registered)

    def build(self, name, num_classes):
        """`build_model`: a registered model, or a torchvision:/timm: network; an unknown name is one line."""
        if is_external(name):
            return build_external(name, num_classes)
        return self.registered.lookup(name)(num_classes=num_classes)


class InputSizes(Mapping):
    """`input_size`: the side each registered network is built for, plus for torchvision:/timm: networks the side they
    are fixed to (timm's ViT, Swin ...) or None, which means any size."""

    def __init__(self, registered):
        self.registered = registered

    def __getitem__(self, name):
        if is_external(name):
            return fixed_input_size(name)
        return self.registered[name]

    def __contains__(self, name):
        return is_external(name) or name in self.registered

    def __iter__(self):
        return iter(self.registered)

    def __len__(self):
        return len(self.registered)
