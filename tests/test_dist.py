"""DIST (Huang et al., NeurIPS 2022): golden value and gradients, invariance, bf16, flags, adapter."""
from argparse import Namespace

import pytest
import torch

from distiller_zoo.base import Batch, ModelOutput, StepContext, get_distiller_class
from distiller_zoo.DIST import DIST, DISTDistiller
from distiller_zoo.ICKD import ICKDLoss
from distiller_zoo.MLKD import MLKDLoss
from tests.golden_dist_mlkd_ickd import (GOLDEN, adapter_defaults, assert_grads, decoded_inputs, logit_probe,
                                         make_opt)
from tests.golden_json import assert_close, decode


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["DIST"], ids=lambda c: "tau{tau}_b{beta}_g{gamma}".format(**c["init"]))
def test_dist_matches_the_official_formula_with_gradients(case):
    inputs = decoded_inputs(case)
    value = DIST(**case["init"])(inputs["z_s"], inputs["z_t"])
    assert value.dim() == 0
    assert_close(value, decode(case["value"]))
    assert_grads(value, inputs, case["grads"])


# ---- properties ---------------------------------------------------------------------------------------------------

def test_dist_is_invariant_to_logit_shifts_and_zero_for_identical_logits():
    z = torch.randn(8, 10, dtype=torch.float64)
    loss = DIST(tau=4.0)
    assert 0 <= loss(z, z) < 1e-3  # not exactly 0: the official eps 1e-8 next to small centred norms
    assert_close(loss(z + 3.0, z - 1.5), loss(z, z))


def test_losses_compute_in_float32_under_bf16_autocast():
    z = [torch.randn(6, 10) for _ in range(4)]
    ickd = ICKDLoss(Namespace(s_dim=4, t_dim=3, feat_dim=3))
    f_s, f_t = torch.randn(6, 4, 4, 4), torch.randn(6, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = [t.bfloat16() for t in z]
        dist = DIST(tau=4.0)(half[0], half[2])
        mlkd = MLKDLoss()(*half)
        ickd_value = ickd([f_s.bfloat16()], [f_t.bfloat16()])[0]
    assert dist.dtype == ickd_value.dtype == torch.float32 and all(t.dtype == torch.float32 for t in mlkd)
    exact = [t.bfloat16().float() for t in z]
    torch.testing.assert_close(dist, DIST(tau=4.0)(exact[0], exact[2]))
    for a, b in zip(mlkd, MLKDLoss()(*exact)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ickd_value, ickd([f_s.bfloat16().float()], [f_t.bfloat16().float()])[0])


# ---- adapters -----------------------------------------------------------------------------------------------------

def test_adapter_flags_keep_the_official_names_and_defaults():
    assert adapter_defaults("dist") == {"dist_beta": 1.0, "dist_gamma": 1.0, "dist_tau": 1.0}
    assert adapter_defaults("mlkd") == {"mlkd_temperature": 4.0, "mlkd_faithful": False}
    assert adapter_defaults("ickd") == {"ickd_faithful": False}


def test_dist_adapter_returns_the_dist_term_on_logits():
    distiller = get_distiller_class("dist")(make_opt("dist", dist_tau=4.0, dist_beta=2.0), logit_probe(), None, None)
    assert isinstance(distiller, DISTDistiller) and not distiller.needs.feats and not list(distiller.parameters())
    y_s, y_t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    terms = distiller.loss(ModelOutput(y_s), ModelOutput(y_t), Batch(None, torch.arange(4)), StepContext())
    assert list(terms) == ["dist"]
    torch.testing.assert_close(terms["dist"], DIST(2.0, 1.0, 4.0)(y_s, y_t))
