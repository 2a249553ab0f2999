"""OFD (Heo et al., ICCV 2019): golden margins, loss and distiller, teacher mode, BNs before ReLU, pairs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import Batch, ModelOutput, StepContext, get_distiller_class
from distiller_zoo.OFD import OFDLoss, feat_loss, get_margin_from_BN
from helper.errors import UserError
from tests.golden_json import assert_close, decode, with_grad
from tests.golden_review_ofd import (CASES, CIFAR_NAMES, SHUFFLENETS, TEACHERS, build, check_grads_and_buffers,
                                     decode_dict, every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss,
                                     features, load_params, losses_are_float32_under_bf16_autocast, network,
                                     one_training_step_on_cross_architecture_pairs_moves_student_and_method, parse,
                                     probe_of, step_cases)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- golden: OFD --------------------------------------------------------------------------------------------------

def bn_with(weight, bias, dtype=torch.float64):
    bn = nn.BatchNorm2d(weight.numel()).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    return bn


def test_margins_match_the_reference_and_follow_the_bn_dtype():
    case = CASES["margins"]
    weight, bias = decode(case["weight"]), decode(case["bias"])
    assert_close(get_margin_from_BN(bn_with(weight, bias)), decode(case["margin"]))
    single = get_margin_from_BN(bn_with(weight, bias, torch.float32))
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), decode(case["margin"]), rtol=1e-6, atol=1e-6)


def test_feat_loss_value_and_gradients_match_the_three_case_reference():
    case = CASES["feat_loss"]
    inputs = decode_dict(case["inputs"], grad=True)
    margin = decode(case["margin"])
    value = feat_loss(inputs["source"], inputs["target"], margin)
    assert_close(value, decode(case["value"]))
    assert_close(feat_loss(inputs["source"], inputs["target"], margin.reshape(1, -1, 1, 1)), value.detach())
    value.backward()
    for key in ("source", "target"):
        assert_close(inputs[key].grad, decode(case["grads"][key]))


def case_bns(case):
    return [bn_with(decode(bn["weight"]), decode(bn["bias"])) for bn in case["bns"]]


@pytest.mark.parametrize("name", ["ofd_k1", "ofd_k3"])
def test_ofd_loss_matches_the_reference_with_deep_end_pairing_and_pooled_teacher(name):
    case = CASES[name]
    criterion = OFDLoss(case["s_channels"], case["t_channels"], case_bns(case), case["kernel_size"]).double().train()
    assert {k: list(v.shape) for k, v in criterion.state_dict().items()} == case["state_shapes"]
    load_params(criterion, case["params"])
    feats = with_grad(decode(case["feature_student"]))
    value = criterion(feats, decode(case["feature_teacher"]))
    assert_close(value, decode(case["value"]))
    value.backward()
    assert_close([f.grad for f in feats], decode(case["grads"]))
    check_grads_and_buffers(criterion, case)


class StubTeacher(nn.Module):
    """Only what the OFD distiller reads from a teacher at construction: its BNs before ReLU."""

    def __init__(self, bns):
        super().__init__()
        self.bns = nn.ModuleList(bns)

    def get_bn_before_relu(self):
        return list(self.bns)


def with_stem_and_pooled(stages):
    """A feature list as the networks return it: [stem, stages..., pooled]."""
    return [torch.zeros(2, 1, 1, 1, dtype=torch.float64)] + list(stages) + [torch.zeros(2, 1, dtype=torch.float64)]


def test_ofd_distiller_uses_the_loop_features_and_matches_ofdloss_golden():
    case = CASES["ofd_k1"]
    feats_t = decode(case["feature_teacher"])
    feats_s = with_grad(decode(case["feature_student"]))
    probe = probe_of(with_stem_and_pooled(feats_s), with_stem_and_pooled(feats_t))
    distiller = get_distiller_class("ofd")(parse("ofd"), probe, None, StubTeacher(case_bns(case)))
    assert {k: list(v.shape) for k, v in distiller.state_dict().items()} == case["state_shapes"]
    distiller = distiller.double().train()
    load_params(distiller, case["params"])
    terms = distiller.loss(ModelOutput(None, with_stem_and_pooled(feats_s)),
                           ModelOutput(None, with_stem_and_pooled(feats_t)), Batch(images=None, targets=None),
                           StepContext())
    assert list(terms) == ["ofd"]
    assert_close(terms["ofd"], decode(case["value"]))
    terms["ofd"].backward()
    assert_close([f.grad for f in feats_s], decode(case["grads"]))
    check_grads_and_buffers(distiller, case)


class TinyTeacher(nn.Module):
    """The fixture's two-stage teacher (see make_review_ofd_fixtures.tiny_teacher_params), in the models' API."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 5, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)

    def get_bn_before_relu(self):
        return [self.bn1, self.bn2]

    def forward(self, x, is_feat=False, preact=False):
        pre1 = self.bn1(self.conv1(x))
        pre2 = self.bn2(self.conv2(F.avg_pool2d(F.relu(pre1), 2)))
        stages = [pre1, pre2] if preact else [F.relu(pre1), F.relu(pre2)]
        pooled = stages[-1].mean(dim=(2, 3))
        return [x] + stages + [pooled], pooled


@pytest.mark.parametrize("name", ["ofd_teacher_eval", "ofd_teacher_train_faithful"])
def test_ofd_teacher_in_eval_by_default_and_in_train_mode_when_faithful_leaving_it_unchanged(name):
    case = CASES[name]
    teacher = TinyTeacher().double().eval()
    load_params(teacher, case["teacher"])
    images = decode(case["images"])
    feats_s = with_grad(decode(case["feature_student"]))
    with torch.no_grad():
        feat_t, _ = teacher(images, is_feat=True, preact=True)
    probe = probe_of(with_stem_and_pooled(feats_s), feat_t)
    distiller = get_distiller_class("ofd")(parse("ofd", ["--ofd_faithful"] if case["faithful"] else []), probe, None,
                                           teacher).double().train()
    assert "teacher" not in dict(distiller.named_children()) and not any("conv1" in k for k in distiller.state_dict())
    load_params(distiller, case["params"])
    # The loop's (eval-mode) teacher features; in faithful mode they are replaced by a train-mode forward.
    out_t = ModelOutput(None, feat_t if not case["faithful"] else [torch.full_like(f, 1e3) for f in feat_t])
    value = distiller.loss(ModelOutput(None, with_stem_and_pooled(feats_s)), out_t, Batch(images=images, targets=None),
                           StepContext())["ofd"]
    assert_close(value, decode(case["value"]))
    value.backward()
    assert_close([f.grad for f in feats_s], decode(case["grads"]))
    check_grads_and_buffers(distiller, case)
    assert not teacher.training
    fresh = TinyTeacher().double().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in teacher.state_dict().items() if "running" in k or "tracked" in k)


# ---- flags --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("teacher", SHUFFLENETS)
def test_ofd_refuses_a_teacher_without_bns_before_relu(teacher):
    with pytest.raises(UserError):
        build("ofd", teacher, "resnet8x4")


# ---- models: stage channels and BNs before ReLU (mdistiller's) ----------------------------------------------------

@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_stage_channels_are_the_widths_of_stem_and_stage_outputs(name):
    for preact in (False, True):
        feats, _ = features(name, preact)
        assert network(name).get_stage_channels() == [f.shape[1] for f in feats[:-1]]


def mdistiller_bn_names(name, model):
    """The BNs mdistiller's get_bn_before_relu returns, as module names of our (same-keyed) networks."""
    if name.startswith("resnet"):
        return [f"layer{i}.{len(getattr(model, f'layer{i}')) - 1}.bn2" for i in (1, 2, 3)]
    if name == "ResNet50":
        return [f"layer{i}.{len(getattr(model, f'layer{i}')) - 1}.bn3" for i in (1, 2, 3, 4)]
    if name.startswith("wrn"):
        return ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
    if name.startswith("vgg"):
        return [f"block{i}.{len(getattr(model, f'block{i}')) - 1}" for i in (1, 2, 3, 4)]
    return [f"blocks.{i}.{len(model.blocks[i]) - 1}.conv.7" for i in (1, 2, 4, 6)]


@pytest.mark.parametrize("name", [n for n in CIFAR_NAMES if n not in SHUFFLENETS])
def test_bn_before_relu_are_mdistillers_and_precede_the_pre_relu_stage_outputs(name):
    model = network(name)
    names = {id(m): n for n, m in model.named_modules()}
    bns = model.get_bn_before_relu()
    assert [names[id(bn)] for bn in bns] == mdistiller_bn_names(name, model)
    assert [bn.num_features for bn in bns] == model.get_stage_channels()[1:]
    assert all(isinstance(bn, nn.BatchNorm2d) for bn in bns)


# ---- every CIFAR pair builds and distils; one real step on cross-architecture pairs -------------------------------

@pytest.mark.parametrize("method", ["ofd"])
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher):
    every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher)


@pytest.mark.parametrize("pair,method,faithful", step_cases("ofd"))
def test_one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful):
    one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful)


@pytest.mark.parametrize("method", ["ofd"])
def test_losses_are_float32_under_bf16_autocast(method):
    losses_are_float32_under_bf16_autocast(method)
