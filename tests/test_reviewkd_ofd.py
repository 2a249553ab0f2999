"""ReviewKD and OFD: golden values/gradients/BN buffers, official names and tables, flags, every CIFAR pair."""
import argparse
import functools
import inspect
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distiller_zoo
from distiller_zoo.base import Batch, ModelOutput, Needs, ProbeShapes, StepContext, get_distiller_class
from distiller_zoo.OFD import ConnectorConvBN, OFDLoss, feat_loss, get_margin_from_BN
from distiller_zoo.ReviewKD import ABF, ReviewKD, build_abfs, hcl, hcl_loss, review_warmup
from helper.errors import UserError
from models import build_model
from tests.golden_json import assert_close, decode, with_grad

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "review_ofd_golden.json")
with open(GOLDEN) as _f:
    CASES = json.load(_f)

CIFAR_NAMES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
               "resnet32x4", "resnet8x4_double", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8",
               "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]  # scripts/run_cifar_vanilla.sh
SHUFFLENETS = ("ShuffleV1", "ShuffleV2")


pytestmark = pytest.mark.usefixtures("one_thread")


def decode_dict(x, grad=False):
    """A dict of JSON tensors decoded (as leaves requiring grad if asked)."""
    return {k: with_grad(decode(v)) if grad else decode(v) for k, v in x.items()}


def parse(name, argv=()):
    parser = argparse.ArgumentParser()
    get_distiller_class(name).add_args(parser)
    return parser.parse_args(list(argv))


def probe_of(feat_s, feat_t, num_classes=100):
    return ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=torch.zeros(2, num_classes),
                       logit_t=torch.zeros(2, num_classes), n_data=10, num_classes=num_classes)


def load_params(module, params):
    """Put the fixture's parameters into `module` (BN running buffers keep their fresh values)."""
    state = module.state_dict()
    state.update(decode_dict(params))
    module.load_state_dict(state)


def check_grads_and_buffers(module, case, prefix=""):
    for key, expected in case["param_grads"].items():
        assert_close(module.get_parameter(prefix + key).grad, decode(expected))
    state = module.state_dict()
    for key, expected in case["buffers"].items():
        assert_close(state[prefix + key].double(), decode(expected))


def grad_or_zeros(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


# ---- golden: ReviewKD --------------------------------------------------------------------------------------------

def test_hcl_loss_value_and_gradients_match_the_float64_reference():
    case = CASES["hcl"]
    fs, ft = with_grad(decode(case["inputs"]["fstudent"])), with_grad(decode(case["inputs"]["fteacher"]))
    value = hcl_loss(fs, ft)
    assert_close(value, decode(case["value"]))
    value.backward()
    assert_close([f.grad for f in fs], decode(case["grads"]["fstudent"]))
    assert_close([f.grad for f in ft], decode(case["grads"]["fteacher"]))


@pytest.mark.parametrize("name", ["abf_fuse_resize", "abf_deepest"])
def test_abf_outputs_gradients_and_bn_buffers_match_the_reference(name):
    case = CASES[name]
    abf = ABF(*case["init"]).double().train()
    assert list(abf.state_dict()) == case["state_keys"]
    load_params(abf, case["params"])
    inputs = decode_dict(case["inputs"], grad=True)
    out, fused = abf(inputs["x"], inputs.get("y"), case["shape"], case["out_shape"])
    assert_close(out, decode(case["out"]))
    assert_close(fused, decode(case["fused"]))
    value = (out * decode(case["w_out"])).sum() + (fused * decode(case["w_fused"])).sum()
    assert_close(value, decode(case["value"]))
    value.backward()
    for key, expected in case["grads"].items():
        assert_close(inputs[key].grad, decode(expected))
    check_grads_and_buffers(abf, case)


def reviewkd_from_case(case):
    argv = ["--reviewkd_max_mid_channel", str(case["max_mid_channel"])]
    argv += ["--reviewkd_faithful"] if case["faithful"] else []
    feat_s, feat_t = decode(case["feat_s"]), decode(case["feat_t"])
    distiller = get_distiller_class("reviewkd")(parse("reviewkd", argv), probe_of(feat_s, feat_t), None, None)
    return distiller, feat_s, feat_t


@pytest.mark.parametrize("name", ["reviewkd_default", "reviewkd_faithful"])
def test_reviewkd_distiller_matches_the_reference_in_both_modes(name):
    case = CASES[name]
    distiller, feat_s, feat_t = reviewkd_from_case(case)
    assert {k: list(v.shape) for k, v in distiller.state_dict().items()} == case["state_shapes"]
    assert distiller.abfs[0].conv1[0].out_channels == case["mid_channel"]
    distiller = distiller.double().train()
    load_params(distiller, case["params"])
    feat_s = with_grad(feat_s)
    terms = distiller.loss(ModelOutput(torch.zeros(2, 100), feat_s), ModelOutput(torch.zeros(2, 100), feat_t),
                           Batch(images=None, targets=None), StepContext())
    assert list(terms) == ["reviewkd"] and terms["reviewkd"].dim() == 0
    assert_close(terms["reviewkd"], decode(case["value"]))
    terms["reviewkd"].backward()
    assert_close([grad_or_zeros(f) for f in feat_s], decode(case["grads"]))
    check_grads_and_buffers(distiller, case)


# ---- golden: OFD -------------------------------------------------------------------------------------------------

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


# ---- official names, signatures and tables -----------------------------------------------------------------------

def test_public_signatures_keep_the_official_names():
    def args(fn):
        return list(inspect.signature(fn).parameters)

    assert args(hcl_loss) == ["fstudent", "fteacher"] and hcl is hcl_loss
    assert args(ABF.__init__) == ["self", "in_channel", "mid_channel", "out_channel", "fuse"]
    assert args(ABF.forward) == ["self", "x", "y", "shape", "out_shape"]
    assert all(inspect.signature(ABF.forward).parameters[k].default is None for k in ("y", "shape", "out_shape"))
    assert args(get_margin_from_BN) == ["bn"]
    assert args(feat_loss) == ["source", "target", "margin"]
    assert args(OFDLoss.__init__) == ["self", "s_channels", "t_channels", "bn_before_relu", "kernel_size"]
    assert inspect.signature(OFDLoss).parameters["kernel_size"].default == 1
    assert args(OFDLoss.forward) == ["self", "feature_student", "feature_teacher"]
    assert distiller_zoo.ReviewKD.hcl_loss is hcl_loss and distiller_zoo.ReviewKD.ABF is ABF
    assert distiller_zoo.OFD.get_margin_from_BN is get_margin_from_BN and distiller_zoo.OFDLoss is OFDLoss
    assert distiller_zoo.OFD.feat_loss is feat_loss


@functools.lru_cache(maxsize=None)
def network(name):
    torch.manual_seed(0)
    return build_model(name, 100).eval()


@functools.lru_cache(maxsize=None)
def features(name, preact):
    """(feats, logits) of `network(name)` on a fixed batch of 2."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return network(name)(x, is_feat=True, preact=preact)


def build(method, teacher, student, argv=()):
    needs = get_distiller_class(method).needs
    feat_s, logit_s = features(student, needs.preact)
    feat_t, logit_t = features(teacher, needs.teacher_needs.preact)
    probe = ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=10, num_classes=100)
    return get_distiller_class(method)(parse(method, argv), probe, network(student), network(teacher))


def test_reviewkd_and_ofd_state_dicts_carry_the_official_keys_for_resnet32x4_to_resnet8x4():
    keys = CASES["official_keys"]
    review = build("reviewkd", "resnet32x4", "resnet8x4")
    assert {k: list(v.shape) for k, v in review.state_dict().items()} == keys["reviewkd_abfs"]
    ofd = build("ofd", "resnet32x4", "resnet8x4")
    assert {k: list(v.shape) for k, v in ofd.state_dict().items()} == keys["ofd_connectors"]
    assert isinstance(ofd.connectors, ConnectorConvBN)
    assert all(isinstance(c[0], nn.Conv2d) and isinstance(c[1], nn.BatchNorm2d) for c in ofd.connectors.connectors)
    student = build_model("resnet8x4", 100)
    wrapper = ReviewKD(student, [64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32])
    expected = [f"student.{k}" for k in student.state_dict()] + list(keys["reviewkd_abfs"])
    assert list(wrapper.state_dict()) == expected


def test_dvlab_wrapper_reviews_like_the_distiller():
    torch.manual_seed(0)
    student = build_model("resnet8x4", 100).double().train()
    wrapper = ReviewKD(student, [64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32]).double().train()
    distiller = build("reviewkd", "resnet32x4", "resnet8x4").double().train()
    distiller.abfs.load_state_dict(wrapper.abfs.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    results, logits = wrapper(x)
    feats, logits_again = student(x, is_feat=True)
    t_feats = [torch.zeros_like(f) for f in feats]
    assert [list(r.shape) for r in results] == [[4, 64, 32, 32], [4, 128, 16, 16], [4, 256, 8, 8], [4, 256, 1, 1]]
    expected = hcl_loss(results, [torch.zeros_like(r) for r in results])
    value = distiller.loss(ModelOutput(logits_again, feats), ModelOutput(logits, t_feats), Batch(x, None),
                           StepContext())["reviewkd"]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


# (in_channels, out_channels, shapes, out_shapes) of dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py
# build_review_kd, with out_shapes defaulting to shapes and the resnet entry's fifth shape unused by zip.
OFFICIAL_TABLES = {
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("wrn_40_2", "wrn_40_1"): ([16, 32, 64, 64], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("wrn_40_2", "ShuffleV1"): ([240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("resnet32x4", "ShuffleV1"): ([240, 480, 960, 960], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("resnet32x4", "ShuffleV2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32]),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("resnet110", "resnet32"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32]),
    ("ResNet50", "vgg8"): ([128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048], [1, 4, 4, 8, 16],
                           [1, 4, 8, 16, 32]),
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [1, 4, 4, 8, 16]),
    ("ResNet50", "MobileNetV2"): ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [1, 2, 4, 8, 16],
                                  [1, 4, 8, 16, 32]),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16],
                               [1, 4, 4, 8, 16]),
}


@pytest.mark.parametrize("pair", sorted(OFFICIAL_TABLES), ids="->".join)
def test_reviewkd_derives_the_official_channel_and_shape_tables(pair):
    in_channels, out_channels, shapes, out_shapes = OFFICIAL_TABLES[pair]
    distiller = build("reviewkd", *pair)
    assert distiller.shapes == shapes and distiller.out_shapes == out_shapes
    deepest_first = list(distiller.abfs)
    assert [abf.conv1[0].in_channels for abf in deepest_first][::-1] == in_channels
    assert [abf.conv2[0].out_channels for abf in deepest_first][::-1] == out_channels
    assert all(abf.conv1[0].out_channels == min(512, in_channels[-1]) for abf in deepest_first)
    assert deepest_first[0].att_conv is None and all(abf.att_conv is not None for abf in deepest_first[1:])


# ---- flags, needs, warm-up ---------------------------------------------------------------------------------------

def test_flags_keep_official_defaults_under_prefixed_names():
    assert vars(parse("reviewkd")) == {"reviewkd_warmup_epochs": 20.0, "reviewkd_max_mid_channel": 512,
                                       "reviewkd_faithful": False}
    assert vars(parse("ofd")) == {"ofd_kernel_size": 1, "ofd_faithful": False}


@pytest.mark.parametrize("method,argv", [("reviewkd", ["--reviewkd_warmup_epochs", "-1"]),
                                         ("reviewkd", ["--reviewkd_max_mid_channel", "0"]),
                                         ("ofd", ["--ofd_kernel_size", "2"]), ("ofd", ["--ofd_kernel_size", "0"])])
def test_unusable_flags_stop_at_start_up_with_a_user_error(method, argv):
    with pytest.raises(UserError):
        build(method, "resnet32x4", "resnet8x4", argv)


@pytest.mark.parametrize("teacher", SHUFFLENETS)
def test_ofd_refuses_a_teacher_without_bns_before_relu(teacher):
    with pytest.raises(UserError):
        build("ofd", teacher, "resnet8x4")


def test_needs_teacher_pre_relu_only_in_faithful_reviewkd():
    review = build("reviewkd", "resnet32x4", "resnet8x4")
    assert review.needs == Needs(feats=True) and not review.needs.teacher_needs.preact
    faithful = build("reviewkd", "resnet32x4", "resnet8x4", ["--reviewkd_faithful"])
    assert not faithful.needs.preact and faithful.needs.teacher_needs.preact and faithful.needs.teacher_needs.feats
    assert get_distiller_class("reviewkd").needs == Needs(feats=True)
    assert get_distiller_class("ofd").needs == Needs(feats=True, preact=True)


def test_max_mid_channel_is_used_by_default_and_ignored_when_faithful():
    assert build_abfs([8, 16, 600], [4, 4, 4])[0].conv1[0].out_channels == 512
    assert build_abfs([8, 16, 600], [4, 4, 4], max_mid_channel=1024)[0].conv1[0].out_channels == 600
    assert build_abfs([8, 16, 600], [4, 4, 4], max_mid_channel=1024, faithful=True)[0].conv1[0].out_channels == 512
    default = build("reviewkd", "resnet32x4", "resnet8x4", ["--reviewkd_max_mid_channel", "64"])
    faithful = build("reviewkd", "resnet32x4", "resnet8x4", ["--reviewkd_max_mid_channel", "64", "--reviewkd_faithful"])
    assert {abf.conv1[0].out_channels for abf in default.abfs} == {64}
    assert {abf.conv1[0].out_channels for abf in faithful.abfs} == {256}


def test_warmup_ramps_from_the_first_epoch_by_default_and_from_zero_when_faithful():
    default = build("reviewkd", "resnet32x4", "resnet8x4").term_schedules(parse("reviewkd"))["reviewkd"]
    faithful_opt = parse("reviewkd", ["--reviewkd_faithful"])
    faithful = build("reviewkd", "resnet32x4", "resnet8x4", ["--reviewkd_faithful"]).term_schedules(faithful_opt)
    assert [default(e, 0, 100) for e in (1, 10, 20, 240)] == [0.05, 0.5, 1.0, 1.0]
    assert [faithful["reviewkd"](e, 0, 100) for e in (1, 11, 21, 240)] == [0.0, 0.5, 1.0, 1.0]
    assert review_warmup(1, 0, 10, warmup=0) == 1.0
    assert build("ofd", "resnet32x4", "resnet8x4").term_schedules(parse("ofd")) == {}


# ---- models: stage channels and BNs before ReLU (mdistiller's) ---------------------------------------------------

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

def loss_step(method, teacher, student, argv=()):
    distiller = build(method, teacher, student, argv).train()
    needs = distiller.needs
    feat_s, logit_s = features(student, needs.preact)
    feat_t, logit_t = features(teacher, needs.teacher_needs.preact)
    feat_s = [f.clone().requires_grad_(True) for f in feat_s]
    x = torch.randn(2, 3, 32, 32)
    value = distiller.loss(ModelOutput(logit_s, feat_s), ModelOutput(logit_t, feat_t), Batch(x, None),
                           StepContext())[method]
    value.backward()
    return distiller, value, feat_s


@pytest.mark.parametrize("method", ["reviewkd", "ofd"])
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher):
    for student in CIFAR_NAMES:
        distiller, value, feat_s = loss_step(method, teacher, student)
        assert value.dim() == 0 and torch.isfinite(value), (teacher, student)
        used = feat_s[1:-1] if method == "ofd" else feat_s[1:]
        assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in used), (teacher, student)
        assert all(torch.isfinite(p.grad).all() for p in distiller.parameters() if p.grad is not None)


@pytest.mark.parametrize("student", CIFAR_NAMES)
def test_reviewkd_distils_from_every_cifar_teacher_including_shufflenets(student):
    for teacher in SHUFFLENETS:
        _, value, _ = loss_step("reviewkd", teacher, student)
        assert torch.isfinite(value)


CROSS_PAIRS = [("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "wrn_16_2"),
               ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("resnet56", "resnet20"), ("vgg13", "resnet8x4")]
STEP_CASES = [(pair, method, False) for pair in CROSS_PAIRS for method in ("reviewkd", "ofd")] + \
    [(pair, method, True) for pair in (("vgg13", "resnet8x4"), ("resnet32x4", "ShuffleV1"))
     for method in ("reviewkd", "ofd")]


@pytest.mark.parametrize("pair,method,faithful", STEP_CASES,
                         ids=[f"{'->'.join(p)}-{m}{'-faithful' if f else ''}" for p, m, f in STEP_CASES])
def test_one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful):
    teacher_name, student_name = pair
    torch.manual_seed(0)
    teacher, student = build_model(teacher_name, 100).eval(), build_model(student_name, 100).train()
    cls = get_distiller_class(method)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student.eval()
        feat_s, logit_s = student(x, is_feat=True, preact=cls.needs.preact)
        feat_t, logit_t = teacher(x, is_feat=True, preact=cls.needs.teacher_needs.preact)
        student.train()
    probe = ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=10, num_classes=100)
    distiller = cls(parse(method, [f"--{method}_faithful"] if faithful else []), probe, student, teacher).train()
    needs = distiller.needs
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_params, method_params = list(student.parameters()), list(distiller.parameters())
    before = [p.detach().clone() for p in student_params + method_params]
    optimizer = torch.optim.SGD(student_params + method_params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    feats, logits = student(x, is_feat=True, preact=needs.preact)
    with torch.no_grad():
        t_feats, t_logits = teacher(x, is_feat=True, preact=needs.teacher_needs.preact)
    terms = distiller.loss(ModelOutput(logits, feats), ModelOutput(t_logits, t_feats), Batch(x, None), StepContext())
    loss = F.cross_entropy(logits, torch.tensor([3, 7])) + 0.001 * terms[method]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method_params)
    moved = [not torch.equal(b, p) for b, p in zip(before, student_params + method_params)]
    assert any(moved[:len(student_params)]) and all(moved[len(student_params):])
    assert not teacher.training  # faithful OFD runs it in train mode inside the step, then restores mode and buffers
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("method", ["reviewkd", "ofd"])
def test_losses_are_float32_under_bf16_autocast(method):
    distiller = build(method, "resnet32x4", "resnet8x4").train()
    needs = distiller.needs
    feat_s, logit_s = features("resnet8x4", needs.preact)
    feat_t, logit_t = features("resnet32x4", needs.teacher_needs.preact)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = distiller.loss(ModelOutput(logit_s, [f.bfloat16() for f in feat_s]),
                               ModelOutput(logit_t, [f.bfloat16() for f in feat_t]),
                               Batch(torch.zeros(2, 3, 32, 32), None), StepContext())[method]
    assert value.dtype == torch.float32 and torch.isfinite(value)
