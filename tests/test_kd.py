"""KD (Hinton, Vinyals, Dean, NIPS Workshop 2014): golden values and gradients, signature, adapter."""
import pytest
import torch

from distiller_zoo.base import ModelOutput, StepContext
from distiller_zoo.KD import DistillKL
from tests.golden_classic1 import (build, cases_of, constructor_and_forward_keep_repdistillers_signatures,
                                   loss_value_and_input_gradients_match_the_reference_formula)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("DistillKL"))
def test_loss_value_and_input_gradients_match_the_reference_formula(name):
    loss_value_and_input_gradients_match_the_reference_formula(name)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [DistillKL], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- properties ---------------------------------------------------------------------------------------------------

def test_per_sample_temperature_equal_across_the_batch_matches_the_global_temperature():
    y_s, y_t = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64)
    kd = DistillKL(4)
    per_sample = kd(y_s, y_t, torch.full((5, 1), 2.0, dtype=torch.float64))
    torch.testing.assert_close(per_sample, kd(y_s, y_t, 2.0))
    torch.testing.assert_close(kd(y_s, y_t), kd(y_s, y_t, 4.0))


# ---- adapter ------------------------------------------------------------------------------------------------------

def test_kd_adapter_adds_no_term_and_needs_no_features():
    distiller = build("kd")
    assert not distiller.needs.feats
    assert distiller.loss(ModelOutput(torch.randn(2, 10)), ModelOutput(torch.randn(2, 10)), None, StepContext()) == {}
