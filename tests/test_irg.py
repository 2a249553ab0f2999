"""IRG (Liu et al., CVPR 2019, SemCKD's code): golden values and gradients, signature, adapter, flags."""
import pytest
import torch

from distiller_zoo.base import StepContext
from distiller_zoo.IRG import IRGDistiller, IRGLoss
from helper.errors import UserError
from tests.golden_classic2 import (E, GOLDEN, check_against_golden, grad_reaches, options, outputs_for, parameters_of,
                                   probe_for, tensors)


# ---- golden values and gradients ----------------------------------------------------------------------------------

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


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (IRGLoss.__init__, [("w_graph", 1, False), ("w_transform", 1, False)]),
    (IRGLoss.forward, [("f_s", E, False), ("f_t", E, False), ("transform_s", E, False), ("transform_t", E, False),
                       ("no_edge_transform", False, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_peer(fn, expected):
    assert parameters_of(fn) == expected


# ---- Distiller adapter --------------------------------------------------------------------------------------------

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
