"""SemCKD: SemCKDLoss and SelfA against a float64 reference of the official computation, and the `semckd` adapter."""
import argparse
import inspect
import json
import os

import pytest
import torch

from distiller_zoo.base import ModelOutput, ProbeShapes, get_distiller_class, StepContext
from distiller_zoo.SemCKD import SemCKDLoss
from helper.errors import UserError
from models import build_model
from models.util import AAEmbed, SelfA
from tests.golden_json import assert_close, decode, with_grad

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "semckd_golden.json")
with open(GOLDEN) as _f:
    CASES = json.load(_f)


def grad_of(x):
    if isinstance(x, list):
        return [grad_of(t) for t in x]
    return x.grad


def test_semckd_loss_value_and_gradients_match_the_reference():
    case = CASES["loss"]["semckd_loss"]
    inputs = {name: with_grad(decode(x)) for name, x in case["inputs"].items()}
    value = SemCKDLoss()(**inputs)
    value.backward()
    assert_close(value, decode(case["value"]))
    for name, expected in case["grads"].items():
        assert_close(grad_of(inputs[name]), decode(expected))


def load_selfa(case):
    module = SelfA(**case["init"]).double()
    params = {name: decode(t) for name, t in case["params"].items()}
    assert set(params) == {name for name, _ in module.named_parameters()}
    state = module.state_dict()
    state.update(params)
    module.load_state_dict(state)
    return module


@pytest.mark.parametrize("name", sorted(CASES["selfa"]))
def test_selfa_and_loss_match_the_reference_in_value_attention_and_all_gradients(name):
    case = CASES["selfa"][name]
    module = load_selfa(case)
    feat_s, feat_t = (with_grad(decode(case["inputs"][k])) for k in ("feat_s", "feat_t"))
    s_value, f_target, attention = module(feat_s, feat_t)
    value = SemCKDLoss()(s_value, f_target, attention)
    value.backward()
    assert_close(attention, decode(case["attention"]))
    assert_close(value, decode(case["value"]))
    assert_close(grad_of(feat_s), decode(case["grads"]["feat_s"]))
    assert_close(grad_of(feat_t), decode(case["grads"]["feat_t"]))
    named = dict(module.named_parameters())
    for param_name, expected in case["param_grads"].items():
        assert_close(named[param_name].grad, decode(expected))


def test_selfa_pools_the_larger_map_and_projects_onto_teacher_channels():
    module = SelfA(2, 2, 4, [3, 5], [6, 2])
    feat_s = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 2, 2)]
    feat_t = [torch.randn(4, 6, 4, 4), torch.randn(4, 2, 4, 4)]
    s_value, f_target, attention = module(feat_s, feat_t)
    assert [[tuple(v.shape) for v in row] for row in s_value] == [[(4, 6, 4, 4), (4, 2, 4, 4)],
                                                                  [(4, 6, 2, 2), (4, 2, 2, 2)]]
    assert [[tuple(t.shape) for t in row] for row in f_target] == [[(4, 6, 4, 4), (4, 2, 4, 4)],
                                                                   [(4, 6, 2, 2), (4, 2, 2, 2)]]
    assert f_target[0][0] is feat_t[0]
    torch.testing.assert_close(f_target[1][1], torch.nn.functional.avg_pool2d(feat_t[1], 2))
    torch.testing.assert_close(attention.sum(-1), torch.ones(4, 2))


def test_signatures_defaults_and_state_dict_keys_are_semckds():
    assert list(inspect.signature(SelfA.__init__).parameters)[1:] == ["s_len", "t_len", "input_channel", "s_n", "s_t",
                                                                        "factor"]
    assert inspect.signature(SelfA.__init__).parameters["factor"].default == 4
    assert list(inspect.signature(SelfA.forward).parameters)[1:] == ["feat_s", "feat_t"]
    assert list(inspect.signature(SemCKDLoss.forward).parameters)[1:] == ["s_value", "f_target", "weight"]
    assert list(inspect.signature(AAEmbed.__init__).parameters)[1:] == ["num_input_channels", "num_target_channels"]
    module = SelfA(1, 2, 8, [3], [4, 5])
    assert module.key_weight1.linear1.in_features == 8 and module.query_weight0.linear2.out_features == 2
    keys = [k for k in module.state_dict() if "regressor01" in k and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    assert keys == [f"regressor01.regressor.{k}" for k in
                    ("0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias", "6.weight")]
    assert module.regressor01.regressor[3].weight.shape == (10, 10, 3, 3)


def test_selfa_rejects_a_short_batch_and_a_batch_size_below_the_factor():
    module = SelfA(1, 1, 4, [3], [3])
    with pytest.raises(ValueError, match="full batches"):
        module([torch.randn(3, 3, 2, 2)], [torch.randn(3, 3, 2, 2)])
    with pytest.raises(UserError, match="--batch_size"):
        SelfA(1, 1, 3, [3], [3])


def test_selfa_refuses_layer_counts_whose_regressor_names_collide():
    with pytest.raises(UserError, match="collide"):
        SelfA(12, 12, 4, [1] * 12, [1] * 12)


# ---- adapter -------------------------------------------------------------------------------------------------------

def real_probe():
    student, teacher = build_model("resnet8", 10).eval(), build_model("wrn_16_2", 10).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feat_s, logit_s = student(x, is_feat=True)
        feat_t, logit_t = teacher(x, is_feat=True)
    return ProbeShapes(feat_s, feat_t, logit_s, logit_t, n_data=100, num_classes=10)


def build(probe, batch_size):
    return get_distiller_class("semckd")(argparse.Namespace(batch_size=batch_size), probe, torch.nn.Identity(),
                                         torch.nn.Identity())


def test_adapter_needs_full_batches_and_sizes_selfa_from_the_stage_outputs_and_batch_size():
    distiller = build(real_probe(), 64)
    assert distiller.needs.feats and distiller.needs.full_batches and not distiller.needs.preact
    attention = distiller.self_attention
    assert attention.key_weight2.linear1.in_features == 64 and attention.query_weight2.linear2.out_features == 16
    assert not hasattr(attention, "key_weight3") and not hasattr(attention, "query_weight3")
    assert attention.regressor02.regressor[0].in_channels == 16
    assert attention.regressor20.regressor[6].out_channels == 32
    assert attention.regressor22.regressor[6].out_channels == 128
    assert any(k.startswith("self_attention.regressor22.") for k in distiller.state_dict())


def fake_feats(batch, channels, sizes, grad=False):
    """[stem, stage1..n, pooled] as `model(x, is_feat=True)` returns them."""
    feats = [torch.randn(batch, c, h, h) for c, h in zip(channels, sizes)] + [torch.randn(batch, channels[-1])]
    return [f.requires_grad_(grad) for f in feats]


def test_adapter_loss_trains_the_stage_features_and_every_attention_parameter():
    """Batch 8: with SemCKD's factor 4 the query/key embeddings are 2-d (at batch 4 they are 1-d, normalised to
    +-1, and get no gradient)."""
    torch.manual_seed(0)
    student, teacher = ([4, 4, 6], [8, 8, 4]), ([4, 6, 8, 5], [8, 8, 4, 2])
    probe = ProbeShapes(fake_feats(2, *student), fake_feats(2, *teacher), torch.randn(2, 10), torch.randn(2, 10),
                        n_data=100, num_classes=10)
    distiller = build(probe, 8)
    feat_s = fake_feats(8, *student, grad=True)
    out_t = ModelOutput(torch.randn(8, 10), fake_feats(8, *teacher))
    terms = distiller.loss(ModelOutput(torch.randn(8, 10), feat_s), out_t, None, StepContext())
    assert list(terms) == ["semckd"] and terms["semckd"].dim() == 0 and torch.isfinite(terms["semckd"])
    terms["semckd"].backward()
    assert [f.grad is not None for f in feat_s] == [False, True, True, False]
    for name, p in distiller.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
