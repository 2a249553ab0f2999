"""Logit standardisation (Sun et al., CVPR 2024), --logit_stand: golden normalize, KD and DKD, signatures."""
import pytest
import torch

from distiller_zoo.DKD import DKDloss, dkd_loss
from distiller_zoo.KD import DistillKL, DistillKL_logit_stand, normalize
from tests.golden_json import assert_close
from tests.golden_ls_simkd_dot import CASES, E, cases_of, decode, leaf, params_of


# ---- logit standardisation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("normalize"))
def test_normalize_matches_the_z_score_over_the_last_dimension(name):
    case = decode(CASES[name])
    logit = leaf(case["inputs"]["logit"])
    out = normalize(logit)
    assert_close(out, case["value"])
    (case["inputs"]["w"] * out).sum().backward()
    assert_close(logit.grad, case["grads"]["logit"])


@pytest.mark.parametrize("name", cases_of("DistillKL_logit_stand"))
def test_kd_on_standardised_logits_matches_the_reference_with_the_temperatures_gradient(name):
    case = decode(CASES[name])
    inputs = {k: leaf(v) for k, v in case["inputs"].items()}
    value = DistillKL_logit_stand()(inputs["y_s"], inputs["y_t"], inputs["temp"])
    assert_close(value.reshape(()), case["value"])
    value.sum().backward()
    for k, expected in case["grads"].items():
        assert_close(inputs[k].grad, expected)


@pytest.mark.parametrize("name", cases_of("dkd_loss"))
def test_dkd_loss_matches_the_reference_with_and_without_standardisation(name):
    case = decode(CASES[name])
    inputs = {k: leaf(v) for k, v in case["inputs"].items()}
    inputs["target"] = inputs["target"].detach().long()
    value = dkd_loss(**inputs)
    assert_close(value, case["value"])
    value.backward()
    for k, expected in case["grads"].items():
        assert_close(inputs[k].grad, expected)


@pytest.mark.parametrize("temperature", [4.0, torch.tensor([3.0], dtype=torch.float64),
                                         torch.tensor([[1.0], [2.0], [3.0], [5.0], [8.0]], dtype=torch.float64)],
                         ids=["float", "tensor1", "per_sample"])
def test_dkd_loss_without_standardisation_is_dkdloss(temperature):
    y_s, y_t = torch.randn(5, 9, dtype=torch.float64) * 3, torch.randn(5, 9, dtype=torch.float64) * 3
    target = torch.tensor([0, 4, 8, 4, 2])
    assert_close(dkd_loss(y_s, y_t, target, 1.0, 8.0, temperature),
                 DKDloss()(y_s, y_t, target, 1.0, 8.0, temperature))
    assert_close(dkd_loss(y_s, y_t, target, 1.0, 8.0, temperature, logit_stand=True),
                 DKDloss()(normalize(y_s), normalize(y_t), target, 1.0, 8.0, temperature))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_a_learnable_temperature_gets_finite_gradients_when_the_teacher_underflows(logit_stand):
    y_s, temp = torch.randn(2, 3, requires_grad=True), torch.ones(2, 1, requires_grad=True)
    y_t = torch.tensor([[0.0, 300.0, 0.0], [300.0, 0.0, 0.0]])
    for loss in (dkd_loss(y_s, y_t, torch.tensor([0, 1]), 1.0, 8.0, temp, logit_stand=logit_stand),
                 DistillKL_logit_stand()(y_s, y_t * 1e4, temp)):
        temp.grad = y_s.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(temp.grad).all() and torch.isfinite(y_s.grad).all()


def test_standardised_losses_compute_in_float32_under_bf16_autocast():
    y_s, y_t, target = torch.randn(6, 10), torch.randn(6, 10) * 4, torch.randint(0, 10, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kd = DistillKL_logit_stand()(y_s.bfloat16(), y_t.bfloat16(), torch.tensor([2.0]))
        dkd = dkd_loss(y_s.bfloat16(), y_t.bfloat16(), target, 1.0, 8.0, 2.0, logit_stand=True)
    assert kd.dtype == dkd.dtype == torch.float32
    s, t = y_s.bfloat16().float(), y_t.bfloat16().float()
    torch.testing.assert_close(kd, DistillKL(2.0)(normalize(s), normalize(t), torch.tensor([2.0])))
    torch.testing.assert_close(dkd, DKDloss()(normalize(s), normalize(t), target, 1.0, 8.0, 2.0))
    assert normalize(y_s.bfloat16()).dtype == torch.bfloat16


def test_standardisation_makes_kd_blind_to_logit_shift_and_scale():
    y_s, y_t = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    scale, shift = torch.rand(4, 1, dtype=torch.float64) * 5 + 0.5, torch.randn(4, 1, dtype=torch.float64)
    torch.testing.assert_close(DistillKL_logit_stand()(y_s * scale + shift, y_t * 3 - 2, 2.0),
                               DistillKL_logit_stand()(y_s, y_t, 2.0))


# ---- signatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (normalize, [("logit", E, False)]),
    (DistillKL_logit_stand.forward, [("y_s", E, False), ("y_t", E, False), ("temp", E, False)]),
    (dkd_loss, [("logits_student", E, False), ("logits_teacher", E, False), ("target", E, False), ("alpha", E, False),
                ("beta", E, False), ("temperature", E, False), ("logit_stand", False, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_the_official_code(fn, expected):
    assert params_of(fn) == expected
