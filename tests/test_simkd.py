"""SimKD (Chen et al., CVPR 2022): golden projector, signatures, state_dict keys, eval model, adapter, flags."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import ModelOutput, StepContext, get_distiller_class
from helper.errors import UserError
from models.util import SimKD
from tests.golden_ls_simkd_dot import (E, build, cases_of, networks, params_of,
                                       projector_outputs_gradients_and_running_stats_match_the_reference)


# ---- signatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (SimKD.__init__, [("s_n", E, True), ("t_n", E, True), ("factor", 2, True)]),
    (SimKD.forward, [("feat_s", E, False), ("feat_t", E, False), ("cls_t", E, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_the_official_code(fn, expected):
    assert params_of(fn) == expected


# ---- SimKD module -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("SimKD"))
def test_projector_outputs_gradients_and_running_stats_match_the_reference(name):
    projector_outputs_gradients_and_running_stats_match_the_reference(name)


def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_simkd_keys(s_n, t_n, factor=2):
    """SimKD's models/util.py: transfer = conv1x1(s_n, t_n//f), BN, ReLU, conv3x3(t_n//f, t_n//f), BN, ReLU,
    conv1x1(t_n//f, t_n), BN, ReLU, all convs bias-free; avg_pool has no state."""
    mid = t_n // factor
    return {"transfer.0.weight": (mid, s_n, 1, 1), **bn_keys("transfer.1", mid), "transfer.3.weight": (mid, mid, 3, 3),
            **bn_keys("transfer.4", mid), "transfer.6.weight": (t_n, mid, 1, 1), **bn_keys("transfer.7", t_n)}


def official_srrl_keys(s_n, t_n):
    """SimKD's / CTKD's models/util.py: transfer = conv1x1(s_n, t_n) without bias, BN, ReLU."""
    return {"transfer.0.weight": (t_n, s_n, 1, 1), **bn_keys("transfer.1", t_n)}


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- adapters on real networks ------------------------------------------------------------------------------------

def teacher_classifier(teacher):
    """The official cls_t, get_feat_modules()[-1] in SimKD's nets: the final Linear under its RepDistiller name."""
    return teacher.fc if hasattr(teacher, "fc") else teacher.linear


PAIRS = [("resnet32x4", "resnet8x4", 256, 256, 256, 256), ("wrn_40_2", "ShuffleV1", 960, 128, 960, 128)]


@pytest.mark.parametrize("teacher_name, student_name, s_map, t_map, s_pool, t_pool", PAIRS,
                         ids=["resnet32x4-resnet8x4", "wrn_40_2-ShuffleV1"])
def test_state_dict_keys_fit_the_official_modules(teacher_name, student_name, s_map, t_map, s_pool, t_pool):
    teacher, student, probe = networks(teacher_name, student_name)
    simkd = build("simkd", teacher, student, probe)
    assert shapes(simkd.proj) == official_simkd_keys(s_map, t_map)
    assert shapes(simkd.cls_t) == {"weight": (100, t_map), "bias": (100,)}
    srrl = build("srrl", teacher, student, probe)
    assert shapes(srrl.srrl) == official_srrl_keys(s_pool, t_pool)
    assert shapes(build("simkd", teacher, student, probe, "--simkd_factor", "4").proj) == \
        official_simkd_keys(s_map, t_map, 4)


@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("wrn_40_2", "ShuffleV1"),
                                                        ("ShuffleV1", "resnet8x4")])
def test_simkd_eval_model_is_the_official_validation_and_needs_only_student_and_distiller(teacher_name, student_name):
    teacher, student, probe = networks(teacher_name, student_name)
    distiller = build("simkd", teacher, student, probe)
    for bn in distiller.proj.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    distiller.eval()
    evaluator = distiller.eval_model(student).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = evaluator(x)
        feat_s, _ = student(x, is_feat=True)
        feat_t, _ = teacher(x, is_feat=True)
        expected = distiller.proj(feat_s[-2], feat_t[-2], teacher_classifier(teacher))[2]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    owned = {id(p) for p in list(student.parameters()) + list(distiller.parameters())}
    assert {id(p) for p in evaluator.parameters()} <= owned
    other_teacher, _, other_probe = networks(teacher_name, student_name, seed=1)
    restored = build("simkd", other_teacher, student, other_probe)
    assert not torch.equal(restored.cls_t.weight, distiller.cls_t.weight)
    restored.load_state_dict(distiller.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored.eval().eval_model(student).eval()(x), got)


def test_simkd_adapter_returns_the_official_mse_and_keeps_the_teachers_classifier_frozen():
    teacher, student, probe = networks("wrn_40_2", "ShuffleV1")
    distiller = build("simkd", teacher, student, probe)
    assert get_distiller_class("simkd").needs.feats and distiller.t_size == 8
    assert sorted(k.split(".")[0] for k in distiller.state_dict()) == ["cls_t"] * 2 + ["proj"] * 18
    assert not any(p.requires_grad for p in distiller.cls_t.parameters())
    assert {id(p) for g in distiller.param_groups(None) for p in g["params"]} == \
        {id(p) for p in distiller.proj.parameters()}
    torch.testing.assert_close(distiller.cls_t.weight, teacher.fc.weight)
    with torch.no_grad():
        teacher.fc.weight.add_(1.0)
    assert not torch.equal(distiller.cls_t.weight, teacher.fc.weight)
    feat_s = [f.detach().clone().requires_grad_(True) for f in student(torch.randn(4, 3, 32, 32), is_feat=True)[0]]
    feat_t = [f.detach() for f in teacher(torch.randn(4, 3, 32, 32), is_feat=True)[0]]
    out_s, out_t = ModelOutput(torch.randn(4, 100), feat_s), ModelOutput(torch.randn(4, 100), feat_t)
    terms = distiller.loss(out_s, out_t, None, StepContext())
    trans_s, trans_t, _ = distiller.proj(feat_s[-2], feat_t[-2], distiller.cls_t)
    assert list(terms) == ["simkd"]
    torch.testing.assert_close(terms["simkd"], F.mse_loss(trans_s, trans_t))
    terms["simkd"].backward()
    assert feat_s[-2].grad.abs().sum() > 0 and all(p.grad is not None for p in distiller.proj.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert distiller.loss(out_s, out_t, None, StepContext())["simkd"].dtype == torch.float32


def test_simkd_flags_and_start_up_errors():
    parser = argparse.ArgumentParser()
    get_distiller_class("simkd").add_args(parser)
    assert vars(parser.parse_args([])) == {"simkd_factor": 2}
    teacher, student, probe = networks("resnet32x4", "resnet8x4")
    with pytest.raises(UserError, match="--simkd_factor"):
        build("simkd", teacher, student, probe, "--simkd_factor", "0")
    with pytest.raises(UserError, match="classifier"):
        build("simkd", nn.Sequential(nn.Linear(256, 100), nn.Linear(100, 100)), student, probe)
    with pytest.raises(UserError, match="no nn.Linear"):
        build("srrl", nn.Identity(), student, probe)
