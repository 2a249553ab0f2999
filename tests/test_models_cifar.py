"""CIFAR model zoo: RepDistiller-compatible keys, shapes, parameter counts and is_feat/preact contract."""
import functools
import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from models import model_dict
from models.ShuffleNetv2 import ShuffleBlock

SPEC_PATH = os.path.join(os.path.dirname(__file__), "data", "model_state_dicts.json")
with open(SPEC_PATH) as spec_file:
    SPEC = json.load(spec_file)
CIFAR_NAMES = [name for name, entry in SPEC.items() if entry["input"] == [3, 32, 32]]
SHUFFLENETS = {"ShuffleV1", "ShuffleV2"}


@functools.lru_cache(maxsize=None)
def built(name):
    """One eval-mode model per name, seeded so that every run builds the same weights."""
    torch.manual_seed(0)
    return model_dict[name](num_classes=SPEC[name]["num_classes"]).eval()


@functools.lru_cache(maxsize=None)
def batch():
    """A fixed [2, 3, 32, 32] input."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@functools.lru_cache(maxsize=None)
def outputs(name, preact):
    """(feats, logits) of `built(name)` on `batch()`."""
    with torch.no_grad():
        return built(name)(batch(), is_feat=True, preact=preact)


def test_every_cifar_reference_name_is_registered():
    assert set(CIFAR_NAMES) <= set(model_dict)
    assert len(CIFAR_NAMES) == 23


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_state_dict_keys_and_shapes_equal_reference_in_order(name):
    keys_and_shapes = [[key, list(value.shape)] for key, value in built(name).state_dict().items()]
    assert keys_and_shapes == SPEC[name]["state_dict"]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_parameter_count_equals_reference(name):
    assert sum(p.numel() for p in built(name).parameters()) == SPEC[name]["params"]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_is_feat_returns_reference_feature_shapes_and_logits(name):
    feats, logits = outputs(name, False)
    assert [list(f.shape) for f in feats] == SPEC[name]["is_feat_shapes"]
    assert list(logits.shape) == SPEC[name]["logits_shape"] == [2, 100]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_plain_forward_returns_the_is_feat_logits(name):
    with torch.no_grad():
        logits = built(name)(batch())
    assert torch.equal(logits, outputs(name, False)[1])


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_preact_keeps_feature_count_shapes_stem_and_pooled_vector(name):
    feats, logits = outputs(name, False)
    pre_feats, pre_logits = outputs(name, True)
    assert [f.shape for f in pre_feats] == [f.shape for f in feats]
    assert torch.equal(pre_feats[0], feats[0]) and torch.equal(pre_feats[-1], feats[-1])
    assert torch.equal(pre_logits, logits)


def expected_activated(name, pre):
    """The activated stage feature RepDistiller derives from the pre-activation stage feature `pre`."""
    if name == "MobileNetV2":
        return pre
    if name == "ShuffleV2":
        return ShuffleBlock(groups=2)(F.relu(pre))
    return F.relu(pre)


@pytest.mark.parametrize("name", [n for n in CIFAR_NAMES if not n.startswith("wrn")])
def test_preact_stage_features_activate_to_the_plain_stage_features(name):
    feats, _ = outputs(name, False)
    pre_feats, _ = outputs(name, True)
    for pre, post in zip(pre_feats[1:-1], feats[1:-1]):
        assert torch.allclose(expected_activated(name, pre), post)
    if name != "MobileNetV2":
        assert any((pre < 0).any() for pre in pre_feats[1:-1])


@pytest.mark.parametrize("name", [n for n in CIFAR_NAMES if n.startswith("wrn")])
def test_wrn_preact_features_are_stage_outputs_through_the_bn_before_relu(name):
    feats, _ = outputs(name, False)
    pre_feats, _ = outputs(name, True)
    model = built(name)
    with torch.no_grad():
        for bn, pre, post in zip(model.get_bn_before_relu(), pre_feats[1:-1], feats[1:-1]):
            assert torch.equal(bn(post), pre)


@pytest.mark.parametrize("name", [n for n in CIFAR_NAMES if n not in SHUFFLENETS])
def test_bn_before_relu_widths_match_intermediate_features(name):
    feats, _ = outputs(name, False)
    bns = built(name).get_bn_before_relu()
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)
    assert [bn.num_features for bn in bns] == [f.shape[1] for f in feats[1:-1]]


@pytest.mark.parametrize("name", sorted(SHUFFLENETS))
def test_shufflenets_refuse_bn_before_relu_with_user_error(name):
    with pytest.raises(UserError):
        built(name).get_bn_before_relu()


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_feat_modules_are_submodules_of_the_model(name):
    model = built(name)
    feat_modules = model.get_feat_modules()
    own = {id(m) for m in model.modules()}
    assert isinstance(feat_modules, nn.ModuleList) and len(feat_modules) > 0
    assert all(id(m) in own for m in feat_modules)


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_state_dict_loads_strict_into_fresh_model_and_reproduces_logits(name):
    torch.manual_seed(123)
    fresh = model_dict[name](num_classes=100).eval()
    checkpoint = {"model": built(name).state_dict()}
    first_key, first_value = next(iter(checkpoint["model"].items()))
    assert not torch.equal(fresh.state_dict()[first_key], first_value)
    fresh.load_state_dict(checkpoint["model"], strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(batch()), outputs(name, False)[1])


def test_vgg_max_pools_before_block4_only_for_64_pixel_inputs():
    with torch.no_grad():
        feats, _ = built("vgg8")(torch.randn(1, 3, 64, 64), is_feat=True)
    assert [f.shape[-1] for f in feats[:-1]] == [64, 32, 16, 8, 4]


def test_repdistiller_builder_names_are_importable_and_registered():
    from models.mobilenetv2 import mobile_half
    from models.resnet import resnet8, resnet8x4_double
    from models.resnetv2 import ResNet18, ResNet50
    from models.ShuffleNetv1 import ShuffleV1
    from models.ShuffleNetv2 import ShuffleV2
    from models.vgg import vgg8, vgg8_bn, vgg19_bn
    from models.wrn import wrn_40_2

    assert model_dict["vgg8"] is vgg8_bn and model_dict["vgg19"] is vgg19_bn
    assert model_dict["MobileNetV2"] is mobile_half and model_dict["ResNet50"] is ResNet50
    assert model_dict["resnet8"] is resnet8 and model_dict["resnet8x4_double"] is resnet8x4_double
    assert model_dict["ShuffleV1"] is ShuffleV1 and model_dict["ShuffleV2"] is ShuffleV2
    assert model_dict["wrn_40_2"] is wrn_40_2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg8(num_classes=10).modules())
    assert ResNet18(num_classes=10).linear.in_features == 512


def test_invalid_architecture_arguments_raise_user_error():
    from models.resnet import ResNet
    from models.wrn import WideResNet

    with pytest.raises(UserError):
        ResNet(9, [16, 16, 32, 64], "basicblock")
    with pytest.raises(UserError):
        ResNet(8, [16, 16, 32, 64], "dense")
    with pytest.raises(UserError):
        WideResNet(depth=15, num_classes=10)


# logits[0, :4] of RepDistiller's own model code (CTKD's for resnet8x4_double) under deterministic_state()
# on deterministic_input(): the values a published checkpoint must reproduce, layer order and ReLU placement included.
REFERENCE_LOGITS = {
    "MobileNetV2": [-0.233974, 1.72861, -2.51123, 1.6279],
    "ResNet50": [-6.47652, 2.67677, 1.86515, -5.90176],
    "ShuffleV1": [-3.15703, 2.53401, -1.78689, 1.12805],
    "ShuffleV2": [-0.374718, 1.23895, -0.634059, -1.09132],
    "resnet110": [2.55231e+11, 1.43182e+12, 8.20507e+10, -1.41249e+12],
    "resnet14": [-2.67281, -1.21737, 2.34357, 1.67295],
    "resnet20": [-2.22027, -1.71052, 1.97875, 2.31918],
    "resnet32": [-139.493, 31.803, 146.823, 2.62504],
    "resnet32x4": [-4.35078, -3.92954, -2.65588, -0.809261],
    "resnet44": [1368.85, 3166.81, -622.72, -3313.33],
    "resnet56": [25015.7, 30139.6, -17916.1, -34360.1],
    "resnet8": [-0.626019, -1.72412, 0.0693382, 1.62261],
    "resnet8x4": [-0.413036, 0.347033, 1.02284, 1.46736],
    "resnet8x4_double": [-0.831844, 1.62392, 2.6669, 1.44129],
    "vgg11": [0.355777, 1.14818, 1.04101, 0.136601],
    "vgg13": [0.423809, 1.14441, 0.971532, 0.0288039],
    "vgg16": [0.257371, 0.96479, 0.807751, -0.0868781],
    "vgg19": [0.289008, 1.09013, 1.0077, 0.132773],
    "vgg8": [0.222498, 0.967129, 0.844142, -0.0341382],
    "wrn_16_1": [-0.617805, -1.24013, 0.275762, 1.31463],
    "wrn_16_2": [0.0150359, -0.0709287, 0.364939, -0.306667],
    "wrn_40_1": [58.003, -152.637, -94.0781, 130.404],
    "wrn_40_2": [-0.11242, -0.0217776, 0.221211, -0.210787],
}


def deterministic_state(model):
    """A state_dict of smooth, seed-free values: sine waves scaled like He init, BN near identity."""
    state = {}
    for index, (key, tensor) in enumerate(model.state_dict().items()):
        if not tensor.dtype.is_floating_point:
            state[key] = tensor
            continue
        wave = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.37 + index).reshape(tensor.shape)
        if key.endswith("running_var"):
            value = 1 + 0.5 * wave.abs()
        elif tensor.dim() == 1:
            value = 0.5 + 0.1 * wave if key.endswith("weight") else 0.1 * wave
        else:
            value = wave * 2 / math.sqrt(tensor[0].numel())
        state[key] = value.float()
    return state


def deterministic_input():
    """A seed-free [1, 3, 32, 32] image."""
    return torch.cos(torch.arange(3 * 32 * 32, dtype=torch.float64) * 0.05).reshape(1, 3, 32, 32).float()


def test_reference_logits_cover_every_cifar_name():
    assert set(REFERENCE_LOGITS) == set(CIFAR_NAMES)


@pytest.mark.parametrize("name", sorted(REFERENCE_LOGITS))
def test_logits_equal_the_peer_implementation_under_fixed_weights(name):
    model = model_dict[name](num_classes=100).eval()
    model.load_state_dict(deterministic_state(model), strict=True)
    with torch.no_grad():
        logits = model(deterministic_input())[0, :4]
    expected = torch.tensor(REFERENCE_LOGITS[name])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
