"""DKD (Zhao et al., CVPR 2022): golden value and gradients, temperature forms, bf16, adapter, warm-up."""
import pytest
import torch

from distiller_zoo.base import Batch, StepContext
from distiller_zoo.CKD import CKDLoss
from distiller_zoo.DKD import DKDloss, warmup_factor
from helper.errors import UserError
from tests.golden_headline import (adapter_defaults, build, cases_of, close,
                                   loss_value_and_gradients_match_the_float64_reference, make_opt, outputs)


# ---- golden values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("DKDloss"))
def test_loss_value_and_gradients_match_the_float64_reference(name):
    loss_value_and_gradients_match_the_float64_reference(name)


# ---- properties ---------------------------------------------------------------------------------------------------

def test_dkd_temperature_forms_agree_and_per_sample_temperatures_weight_each_sample():
    y_s, y_t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4])
    dkd = DKDloss()
    ref = dkd(y_s, y_t, target, 1.0, 8.0, 3.0)
    close(dkd(y_s, y_t, target, 1.0, 8.0, torch.tensor([3.0], dtype=torch.float64)), ref)
    close(dkd(y_s, y_t, target, 1.0, 8.0, torch.full((5, 1), 3.0, dtype=torch.float64)), ref)
    temps = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    per_sample = sum(dkd(y_s[i:i + 1], y_t[i:i + 1], target[i:i + 1], 1.0, 8.0, temps[i].item()) for i in range(5))
    close(dkd(y_s, y_t, target, 1.0, 8.0, temps), per_sample / 5)


def test_dkd_gradients_stay_finite_when_the_teachers_probabilities_underflow():
    y_s, temp = torch.randn(2, 3, requires_grad=True), torch.ones(2, 1, requires_grad=True)
    y_t = torch.tensor([[0.0, 300.0, 0.0], [300.0, 0.0, 0.0]])
    loss = DKDloss()(y_s, y_t, torch.tensor([0, 1]), 1.0, 8.0, temp)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(temp.grad).all() and torch.isfinite(y_s.grad).all()


def test_dkd_and_ckd_compute_in_float32_under_bf16_autocast():
    y_s, y_t, target = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dkd = DKDloss()(y_s.bfloat16(), y_t.bfloat16(), target, 1.0, 8.0, 4.0)
        ckd = CKDLoss(0.1)(y_s.bfloat16(), y_t.bfloat16())
    assert dkd.dtype == ckd.dtype == torch.float32
    torch.testing.assert_close(dkd, DKDloss()(y_s.bfloat16().float(), y_t.bfloat16().float(), target, 1.0, 8.0, 4.0))
    torch.testing.assert_close(ckd, CKDLoss(0.1)(y_s.bfloat16().float(), y_t.bfloat16().float()))


# ---- adapter ------------------------------------------------------------------------------------------------------

def test_dkd_adapter_uses_its_temperature_or_ctkds_and_ramps_in_over_the_warmup():
    assert adapter_defaults("dkd") == {"dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_T": 4.0, "warmup": 20}
    distiller = build("dkd", dkd_alpha=2.0, dkd_beta=3.0, dkd_T=5.0)
    assert not distiller.needs.feats and distiller.term_weights(make_opt()) == {}
    out_s, out_t, targets = outputs()
    terms = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext())
    assert list(terms) == ["dkd"] and terms["dkd"].dim() == 0
    close(terms["dkd"], DKDloss()(out_s.logits, out_t.logits, targets, 2.0, 3.0, 5.0))
    temp = torch.full((4, 1), 7.0, requires_grad=True)
    learned = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext(temperature=temp))["dkd"]
    close(learned, DKDloss()(out_s.logits, out_t.logits, targets, 2.0, 3.0, 7.0))
    learned.backward()
    assert temp.grad.abs().sum() > 0 and out_s.logits.grad.abs().sum() > 0
    schedule = distiller.term_schedules(make_opt(warmup=20))["dkd"]
    assert [schedule(e, 0, 100) for e in (1, 10, 20, 240)] == [0.05, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0, 100, warmup=0) == 1.0


@pytest.mark.parametrize("name,bad", [("dkd", {"dkd_T": 0.0}), ("dkd", {"warmup": -1}), ("ckd", {"ckd_T": 0.0})])
def test_adapters_reject_unusable_flags(name, bad):
    with pytest.raises(UserError):
        build(name, **bad)


# ---- warm-up, hand-computed from the formula ----------------------------------------------------------------------

@pytest.mark.parametrize("epoch, warmup, expected", [(0, 20, 0.0), (1, 20, 0.05), (10, 20, 0.5), (20, 20, 1.0),
                                                     (240, 20, 1.0), (3, 4, 0.75)])
def test_linear_warmup_is_dkds_min_epoch_over_warmup_and_one(epoch, warmup, expected):
    assert warmup_factor(epoch, 0, 782, warmup) == pytest.approx(expected, abs=1e-15)


def test_no_warmup_is_a_factor_of_one():
    assert warmup_factor(1, 0, 782, 0) == 1.0
