"""CKD (Zhu et al., 2024): golden value and gradients, direction and logit-scale properties, adapter."""
import pytest
import torch

from distiller_zoo.base import Batch, StepContext
from distiller_zoo.CKD import CKDLoss
from tests.golden_headline import (adapter_defaults, build, cases_of, close,
                                   loss_value_and_gradients_match_the_float64_reference, outputs)


# ---- golden values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("CKDLoss"))
def test_loss_value_and_gradients_match_the_float64_reference(name):
    loss_value_and_gradients_match_the_float64_reference(name)


# ---- properties ---------------------------------------------------------------------------------------------------

def test_ckd_is_one_directional_and_ignores_logit_scale():
    y_s, y_t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    ckd = CKDLoss(0.5)
    assert not torch.allclose(ckd(y_s, y_t), ckd(y_t, y_s))
    close(ckd(y_s * torch.rand(6, 1, dtype=torch.float64) * 5, y_t * 3), ckd(y_s, y_t))


# ---- adapter ------------------------------------------------------------------------------------------------------

def test_ckd_adapter_returns_the_contrastive_term_on_logits():
    assert adapter_defaults("ckd") == {"ckd_T": 1.0}
    distiller = build("ckd", ckd_T=0.3)
    assert not distiller.needs.feats and not list(distiller.parameters())
    out_s, out_t, targets = outputs()
    terms = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext())
    assert list(terms) == ["ckd"]
    close(terms["ckd"], CKDLoss(0.3)(out_s.logits, out_t.logits))
