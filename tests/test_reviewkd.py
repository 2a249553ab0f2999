"""ReviewKD (Chen et al., CVPR 2021): golden HCL, ABF and distiller, official names and tables, flags, pairs."""
import inspect

import pytest
import torch
from torch import nn

import distiller_zoo
from distiller_zoo.base import Batch, ModelOutput, Needs, StepContext, get_distiller_class
from distiller_zoo.OFD import ConnectorConvBN, OFDLoss, feat_loss, get_margin_from_BN
from distiller_zoo.ReviewKD import ABF, ReviewKD, build_abfs, hcl, hcl_loss, review_warmup
from helper.errors import UserError
from models import build_model
from tests.golden_json import assert_close, decode, with_grad
from tests.golden_review_ofd import (CASES, CIFAR_NAMES, SHUFFLENETS, TEACHERS, build, check_grads_and_buffers,
                                     decode_dict, every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss,
                                     load_params, loss_step, losses_are_float32_under_bf16_autocast,
                                     one_training_step_on_cross_architecture_pairs_moves_student_and_method, parse,
                                     probe_of, step_cases)

pytestmark = pytest.mark.usefixtures("one_thread")


def grad_or_zeros(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


# ---- golden: ReviewKD ---------------------------------------------------------------------------------------------

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


# ---- official names, signatures and tables ------------------------------------------------------------------------

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


# ---- flags, needs, warm-up ----------------------------------------------------------------------------------------

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


# ---- every CIFAR pair builds and distils; one real step on cross-architecture pairs -------------------------------

@pytest.mark.parametrize("method", ["reviewkd"])
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher):
    every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher)


@pytest.mark.parametrize("student", CIFAR_NAMES)
def test_reviewkd_distils_from_every_cifar_teacher_including_shufflenets(student):
    for teacher in SHUFFLENETS:
        _, value, _ = loss_step("reviewkd", teacher, student)
        assert torch.isfinite(value)


@pytest.mark.parametrize("pair,method,faithful", step_cases("reviewkd"))
def test_one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful):
    one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful)


@pytest.mark.parametrize("method", ["reviewkd"])
def test_losses_are_float32_under_bf16_autocast(method):
    losses_are_float32_under_bf16_autocast(method)
