"""SRRL (Yang et al., ICLR 2021): golden projector, signatures, adapter through the frozen classifier."""
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import ModelOutput, StepContext
from models.util import SRRL
from tests.golden_ls_simkd_dot import (E, build, cases_of, networks, params_of,
                                       projector_outputs_gradients_and_running_stats_match_the_reference)


# ---- signatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (SRRL.__init__, [("s_n", E, True), ("t_n", E, True)]),
    (SRRL.forward, [("feat_s", E, False), ("cls_t", E, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_the_official_code(fn, expected):
    assert params_of(fn) == expected


# ---- SRRL module --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("SRRL"))
def test_projector_outputs_gradients_and_running_stats_match_the_reference(name):
    projector_outputs_gradients_and_running_stats_match_the_reference(name)


# ---- adapter on real networks -------------------------------------------------------------------------------------

def test_srrl_adapter_returns_both_official_mses_and_trains_through_the_frozen_classifier():
    teacher, student, probe = networks("resnet32x4", "resnet8x4")
    distiller = build("srrl", teacher, student, probe)
    pooled_s = torch.randn(4, 256, requires_grad=True)
    out_s = ModelOutput(torch.randn(4, 100), [None] * 4 + [pooled_s])
    out_t = ModelOutput(torch.randn(4, 100), [None] * 4 + [torch.randn(4, 256)])
    terms = distiller.loss(out_s, out_t, None, StepContext())
    trans, pred = distiller.srrl(pooled_s, teacher.fc)
    assert sorted(terms) == ["srrl_feat", "srrl_sr"]
    torch.testing.assert_close(terms["srrl_feat"] + terms["srrl_sr"],
                               F.mse_loss(trans, out_t.pooled) + F.mse_loss(pred, out_t.logits))
    terms["srrl_sr"].backward()
    assert pooled_s.grad.abs().sum() > 0 and distiller.srrl.transfer[0].weight.grad.abs().sum() > 0
    assert distiller.cls_t.weight.grad is None and not distiller.cls_t.weight.requires_grad
