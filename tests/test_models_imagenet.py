import copy
import functools
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from models import input_size, model_dict

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "data", "model_state_dicts.json")))
IMAGENET_NAMES = [name for name, entry in REFERENCE.items() if entry["input"] == [3, 224, 224]]
WIDE_NAMES = {"ResNet18Double_wide": ("ResNet18", 2), "resnet34x4_wide": ("ResNet34", 4)}
TORCHVISION_TWINS = {
    "ResNet18": torchvision.models.resnet18,
    "ResNet34": torchvision.models.resnet34,
    "ResNet50_Imagenet": torchvision.models.resnet50,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "wrn_50_2": torchvision.models.wide_resnet50_2,
    "vgg11_imagenet": torchvision.models.vgg11_bn,
    "vgg13_imagenet": torchvision.models.vgg13_bn,
    "MobileNetV2_Imagenet": torchvision.models.mobilenet_v2,
    "ShuffleV2_Imagenet": torchvision.models.shufflenet_v2_x1_0,
    "shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "shufflenet_v2_x2_0": torchvision.models.shufflenet_v2_x2_0,
}
PREACT_NAMES = ["ResNet18", "ResNet50_Imagenet", "ShuffleV2_Imagenet", "MobileNetV1"]


@functools.lru_cache(maxsize=None)
def cached_model(name):
    """One eval-mode instance per name, shared by the tests that only read it."""
    torch.manual_seed(0)
    return model_dict[name]().eval()


def fresh_model(name):
    return copy.deepcopy(cached_model(name))


def meta_model(name, num_classes=1000):
    with torch.device("meta"):
        return model_dict[name](num_classes=num_classes)


def shapes(state_dict):
    return [[key, list(value.shape)] for key, value in state_dict.items()]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def input_batch(batch=2):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def features(model, batch=2, preact=False):
    return model(input_batch(batch), is_feat=True, preact=preact)


@functools.lru_cache(maxsize=None)
def reference_forward(name):
    return features(cached_model(name))


def randomize_bn_statistics(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_reference_lists_every_imagenet_name():
    assert len(IMAGENET_NAMES) == 14


@pytest.mark.parametrize("name", IMAGENET_NAMES + list(WIDE_NAMES))
def test_imagenet_models_are_registered_for_224_inputs(name):
    assert input_size[name] == 224


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_state_dict_keys_shapes_and_param_count_match_reference(name):
    model = cached_model(name)
    assert shapes(model.state_dict()) == REFERENCE[name]["state_dict"]
    assert n_params(model) == REFERENCE[name]["params"]


@pytest.mark.parametrize("name", [n for n in IMAGENET_NAMES if REFERENCE[n]["is_feat_shapes"]])
def test_feature_and_logit_shapes_match_reference(name):
    feats, logits = reference_forward(name)
    assert [list(f.shape) for f in feats] == REFERENCE[name]["is_feat_shapes"]
    assert list(logits.shape) == REFERENCE[name]["logits_shape"]


def test_mobilenetv1_returns_stem_four_stages_and_pooled_vector():
    feats, logits = reference_forward("MobileNetV1")
    assert [tuple(f.shape) for f in feats] == [
        (2, 32, 112, 112), (2, 128, 56, 56), (2, 256, 28, 28), (2, 512, 14, 14), (2, 1024, 7, 7), (2, 1024)]
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_forward_without_is_feat_returns_the_same_logits(name):
    _, logits = reference_forward(name)
    with torch.no_grad():
        plain = cached_model(name)(input_batch())
    assert torch.equal(plain, logits)


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_num_classes_sizes_the_classifier(name):
    last_weight, last_bias = list(meta_model(name, num_classes=7).state_dict().values())[-2:]
    assert last_weight.shape[0] == 7 and last_bias.shape == (7,)


@pytest.mark.parametrize("name", list(TORCHVISION_TWINS))
def test_state_dict_equals_torchvision(name):
    with torch.device("meta"):
        theirs = TORCHVISION_TWINS[name](weights=None)
    ours = meta_model(name)
    assert shapes(ours.state_dict()) == shapes(theirs.state_dict())


@pytest.mark.parametrize("name", ["ResNet18", "MobileNetV2_Imagenet", "ShuffleV2_Imagenet"])
@torch.no_grad()
def test_torchvision_weights_load_strict_and_give_the_same_logits(name):
    torch.manual_seed(2)
    theirs = TORCHVISION_TWINS[name](weights=None)
    randomize_bn_statistics(theirs)
    theirs.eval()
    ours = fresh_model(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = input_batch()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("wide, base, factor", [(wide, *rest) for wide, rest in WIDE_NAMES.items()])
def test_wide_variants_multiply_every_stage_width(wide, base, factor):
    wide_model, base_model = meta_model(wide), meta_model(base)
    with torch.device("meta"):
        wide_feats, _ = wide_model.eval()(torch.empty(2, 3, 224, 224), is_feat=True)
        base_feats, _ = base_model.eval()(torch.empty(2, 3, 224, 224), is_feat=True)
    assert n_params(wide_model) > 3 * n_params(base_model)
    assert wide_feats[0].shape == base_feats[0].shape
    for w, b in zip(wide_feats[1:], base_feats[1:]):
        assert w.shape[1] == factor * b.shape[1]


@pytest.mark.parametrize("peer_name, base", [("ResNet18Double", "ResNet18"), ("resnet34x4", "ResNet34")])
def test_peer_multiplier_names_build_the_unwidened_net(peer_name, base):
    assert shapes(meta_model(peer_name).state_dict()) == shapes(meta_model(base).state_dict())


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_bn_before_relu_matches_channels_of_preact_features(name):
    model = meta_model(name).eval()
    with torch.device("meta"):
        feats, _ = model(torch.empty(1, 3, 224, 224), is_feat=True, preact=True)
    bns = model.get_bn_before_relu()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert [bn.num_features for bn in bns] == [f.shape[1] for f in feats[1:-1]]


@pytest.mark.parametrize("name", PREACT_NAMES)
def test_preact_features_are_negative_somewhere_and_relu_to_the_stage_output(name):
    model = fresh_model(name)
    randomize_bn_statistics(model)
    post, logits = features(model, batch=1)
    pre, pre_logits = features(model, batch=1, preact=True)
    assert torch.equal(logits, pre_logits)
    for p, q in zip(pre[1:-1], post[1:-1]):
        assert p.min() < 0
        activated = q[:, 1::2] if name == "ShuffleV2_Imagenet" else q
        assert torch.equal(F.relu(p), activated)


@pytest.mark.parametrize("name", IMAGENET_NAMES)
def test_feat_modules_hold_every_convolution(name):
    model = meta_model(name)
    feat_convs = {id(m) for m in model.get_feat_modules().modules() if isinstance(m, nn.Conv2d)}
    all_convs = {id(m) for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert feat_convs == all_convs


def ctkd_split_features(model, splits, x):
    """CTKD's VGG feature extraction: slice `features` at `splits`, then the remaining modules, in-place ReLUs."""
    feats = []
    for left, right in zip(splits, splits[1:]):
        for module in model.features[left:right]:
            x = module(x)
        feats.append(x)
    for module in model.features[splits[-1]:]:
        x = module(x)
    feats.append(x)
    return feats


@pytest.mark.parametrize("name, splits", [("vgg11_imagenet", [0, 2, 4, 7, 10]), ("vgg13_imagenet", [0, 3, 6, 9, 12])])
@torch.no_grad()
def test_vgg_features_equal_ctkd_split_features(name, splits):
    model = fresh_model(name)
    randomize_bn_statistics(model)
    x = torch.randn(1, 3, 64, 64)
    ours, _ = model(x, is_feat=True)
    theirs = ctkd_split_features(model, splits, x.clone())
    assert len(ours[:-1]) == len(theirs)
    for a, b in zip(ours[:-1], theirs):
        assert torch.equal(a, b)
