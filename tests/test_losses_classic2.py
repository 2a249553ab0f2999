"""AB, FT, FSP and IRG: golden values/gradients, peer signatures, and their Distiller adapters (HKD: test_hkd.py)."""
import argparse
import inspect
import json
import os

import pytest
import torch
from torch import nn

from distiller_zoo.AB import ABDistiller, ABLoss
from distiller_zoo.base import ModelOutput, ProbeShapes, StepContext
from distiller_zoo.FSP import FSP, FSPDistiller
from distiller_zoo.FT import FactorTransfer, FactorTransferDistiller
from distiller_zoo.IRG import IRGDistiller, IRGLoss
from helper.errors import UserError

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "fixtures", "classic2_golden.json")
with open(GOLDEN_PATH) as _f:
    GOLDEN = json.load(_f)

TOL = dict(rtol=1e-9, atol=1e-12)


def tensors(nested_lists):
    return [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in nested_lists]


def check_against_golden(case, value, inputs):
    """Compare the value (scalar or list) and the gradients of its sum w.r.t. every named input list."""
    expected = case["value"]
    values = value if isinstance(value, list) else [value]
    expected_values = expected if isinstance(expected, list) else [expected]
    assert len(values) == len(expected_values)
    for got, want in zip(values, expected_values):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL)
    flat = [t for name in case["grads"] for t in inputs[name]]
    grads = torch.autograd.grad(sum(values), flat, allow_unused=True)
    expected_grads = [torch.tensor(g, dtype=torch.float64) for name in case["grads"] for g in case["grads"][name]]
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(torch.zeros_like(want) if got is None else got, want, **TOL)


@pytest.mark.parametrize("case", GOLDEN["AB"], ids=lambda c: f"margin{c['params']['margin']}")
def test_ab_loss_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("g_s", "g_t")}
    criterion = ABLoss(case["params"]["feat_num"], margin=case["params"]["margin"])
    check_against_golden(case, criterion(inputs["g_s"], inputs["g_t"]), inputs)


@pytest.mark.parametrize("case", GOLDEN["FT"], ids=lambda c: f"p{c['params']['p1']}{c['params']['p2']}")
def test_factor_transfer_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("f_s", "f_t")}
    criterion = FactorTransfer(**case["params"])
    check_against_golden(case, criterion(inputs["f_s"][0], inputs["f_t"][0]), inputs)


@pytest.mark.parametrize("case", GOLDEN["FSP"])
def test_fsp_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("g_s", "g_t")}
    criterion = FSP(case["params"]["s_shapes"], case["params"]["t_shapes"])
    check_against_golden(case, criterion(inputs["g_s"], inputs["g_t"]), inputs)


@pytest.mark.parametrize("case", GOLDEN["IRG"], ids=lambda c: "-".join(f"{k}{v}" for k, v in c["params"].items()))
def test_irg_loss_matches_semckd_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("f_s", "f_t", "transform_s", "transform_t")}
    params = case["params"]
    criterion = IRGLoss(w_graph=params["w_graph"], w_transform=params["w_transform"])
    value = criterion(inputs["f_s"][0], inputs["f_t"][0], inputs["transform_s"], inputs["transform_t"],
                      params["no_edge_transform"])
    check_against_golden(case, value, inputs)


def test_irg_teacher_side_gets_gradient_only_through_the_vertex_term():
    f_s, f_t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    IRGLoss()(f_s, f_t, [], []).backward()
    torch.testing.assert_close(f_t.grad, 2 * (f_t - f_s).detach() / f_t.numel())


def test_ab_weights_double_towards_the_deepest_stage():
    assert ABLoss(3).w == [0.25, 0.5, 1]


def parameters_of(fn):
    return [(p.name, p.default, p.kind == p.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


E = inspect.Parameter.empty


@pytest.mark.parametrize("fn, expected", [
    (ABLoss.__init__, [("feat_num", E, False), ("margin", 1.0, False)]),
    (ABLoss.forward, [("g_s", E, False), ("g_t", E, False)]),
    (FactorTransfer.__init__, [("p1", 2, False), ("p2", 1, False)]),
    (FactorTransfer.forward, [("f_s", E, False), ("f_t", E, False)]),
    (FSP.__init__, [("s_shapes", E, False), ("t_shapes", E, False)]),
    (FSP.forward, [("g_s", E, False), ("g_t", E, False)]),
    (IRGLoss.__init__, [("w_graph", 1, False), ("w_transform", 1, False)]),
    (IRGLoss.forward, [("f_s", E, False), ("f_t", E, False), ("transform_s", E, False), ("transform_t", E, False),
                       ("no_edge_transform", False, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_peer(fn, expected):
    assert parameters_of(fn) == expected


# ---- Distiller adapters -------------------------------------------------------------------------------------------

def fake_feats(batch, channels, sizes, requires_grad=False):
    """[stem, stage1..3, pooled] like `model(x, is_feat=True)`: stem has the first stage's shape."""
    maps = [torch.randn(batch, channels[0], sizes[0], sizes[0])]
    maps += [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)]
    feats = maps + [torch.randn(batch, channels[-1])]
    return [f.requires_grad_(requires_grad) for f in feats]


STUDENT = ((16, 32, 64), (32, 16, 8))
TEACHER = ((32, 64, 128), (32, 16, 8))


def probe_for(student=STUDENT, teacher=TEACHER):
    return ProbeShapes(feat_s=fake_feats(2, *student), feat_t=fake_feats(2, *teacher), logit_s=torch.randn(2, 10),
                       logit_t=torch.randn(2, 10), n_data=100, num_classes=10)


def outputs_for(student=STUDENT, teacher=TEACHER):
    out_s = ModelOutput(logits=torch.randn(4, 10), feats=fake_feats(4, *student, requires_grad=True))
    out_t = ModelOutput(logits=torch.randn(4, 10), feats=fake_feats(4, *teacher))
    return out_s, out_t


def options(distiller_cls, *argv):
    parser = argparse.ArgumentParser()
    distiller_cls.add_args(parser)
    return parser.parse_args(list(argv))


class StubStudent(nn.Module):
    """Just enough of a model for init_modules: get_feat_modules()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3)

    def get_feat_modules(self):
        return nn.ModuleList([self.body])


def grad_reaches(tensor_or_module):
    if isinstance(tensor_or_module, nn.Module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in tensor_or_module.parameters())
    return tensor_or_module.grad is not None and tensor_or_module.grad.abs().sum() > 0


def test_abound_init_trains_connector_on_stage_feats_and_main_stage_adds_nothing():
    distiller = ABDistiller(options(ABDistiller), probe_for(), None, None)
    assert ABDistiller.needs.preact and ABDistiller.needs.init_stage
    out_s, out_t = outputs_for()
    student = StubStudent()
    assert distiller.init_modules(student)[0] is distiller.connector
    assert list(distiller.init_modules(student)[1].parameters())[0] is student.body.weight
    loss = distiller.init_loss(out_s, out_t, None, StepContext())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(grad_reaches(f) for f in out_s.stage_feats)
    assert grad_reaches(distiller.connector)
    assert distiller.loss(out_s, out_t, None, StepContext()) == {}
    assert distiller.param_groups(None) == []


@pytest.mark.parametrize("student", [((16, 32), (32, 16)), ((16, 32, 64), (8, 4, 2))], ids=["stages", "size"])
def test_abound_rejects_incompatible_stages_at_construction(student):
    with pytest.raises(UserError):
        ABDistiller(options(ABDistiller), probe_for(student=student), None, None)


def test_factor_main_stage_trains_translator_against_frozen_eval_paraphraser():
    distiller = FactorTransferDistiller(options(FactorTransferDistiller), probe_for(), None, None)
    out_s, out_t = outputs_for()
    assert distiller.init_modules(StubStudent()) == [distiller.paraphraser]
    init_loss = distiller.init_loss(out_s, out_t, None, StepContext())
    init_loss.backward()
    assert torch.isfinite(init_loss) and grad_reaches(distiller.paraphraser)
    assert not grad_reaches(distiller.translator)

    distiller.on_init_end()
    distiller.train()
    assert distiller.translator.training and not distiller.paraphraser.training
    terms = distiller.loss(out_s, out_t, None, StepContext())
    terms["factor"].backward()
    assert set(terms) == {"factor"} and torch.isfinite(terms["factor"])
    assert grad_reaches(out_s.last_stage) and grad_reaches(distiller.translator)
    trained = {id(p) for group in distiller.param_groups(None) for p in group["params"]}
    assert trained == {id(p) for p in distiller.translator.parameters()}


def test_factor_main_optimizer_gets_only_the_translator_even_without_init_stage():
    distiller = FactorTransferDistiller(options(FactorTransferDistiller), probe_for(), None, None)
    distiller.train()
    trained = {id(p) for group in distiller.param_groups(None) for p in group["params"]}
    assert trained == {id(p) for p in distiller.translator.parameters()}
    assert distiller.translator.training and not distiller.paraphraser.training


def test_fsp_init_trains_student_on_all_maps_and_main_stage_adds_nothing():
    same = ((16, 32, 64), (32, 16, 8))
    distiller = FSPDistiller(options(FSPDistiller), probe_for(student=same, teacher=same), None, None)
    out_s, out_t = outputs_for(student=same, teacher=same)
    loss = distiller.init_loss(out_s, out_t, None, StepContext())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(grad_reaches(f) for f in out_s.all_but_pooled)
    assert distiller.loss(out_s, out_t, None, StepContext()) == {}
    assert distiller.param_groups(None) == []


def test_fsp_rejects_channel_mismatch_naming_the_maps():
    with pytest.raises(UserError, match=r"equal .*channel counts.*feats\[0\] 16 vs 32.*feats\[3\] 64 vs 128"):
        FSPDistiller(options(FSPDistiller), probe_for(), None, None)


def test_irg_flags_default_like_semckd():
    opt = options(IRGDistiller)
    assert (opt.transform_layer_s, opt.transform_layer_t, opt.no_edge_transform) == ([], [], False)


@pytest.mark.parametrize("argv", [[], ["--transform_layer_s", "1", "3", "--transform_layer_t", "1", "3"]])
def test_irg_gradient_reaches_pooled_and_transform_features(argv):
    distiller = IRGDistiller(options(IRGDistiller, *argv), probe_for(), None, None)
    out_s, out_t = outputs_for()
    terms = distiller.loss(out_s, out_t, None, StepContext())
    terms["irg"].backward()
    assert torch.isfinite(terms["irg"]) and grad_reaches(out_s.pooled)
    if argv:
        assert grad_reaches(out_s.feats[1]) and grad_reaches(out_s.feats[3])


@pytest.mark.parametrize("argv", [["--transform_layer_s", "1", "2", "--transform_layer_t", "1"],
                                  ["--transform_layer_s", "1", "2", "3", "--transform_layer_t", "1", "2", "3"],
                                  ["--transform_layer_s", "1", "9", "--transform_layer_t", "1", "2"]],
                         ids=["unequal", "odd", "range"])
def test_irg_rejects_bad_transform_layers_at_construction(argv):
    with pytest.raises(UserError):
        IRGDistiller(options(IRGDistiller, *argv), probe_for(), None, None)
