"""KDSVD (Lee, Kim and Song, ECCV 2018): golden value and gradients, signature, non-spatial refusal, adapter."""
import pytest
import torch

from distiller_zoo.KDSVD import KDSVD
from tests.golden_classic1 import (adapter_loss_is_finite_and_trains_student_features_and_own_modules, cases_of,
                                   constructor_and_forward_keep_repdistillers_signatures,
                                   loss_value_and_input_gradients_match_the_reference_formula)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("KDSVD"))
def test_loss_value_and_input_gradients_match_the_reference_formula(name):
    loss_value_and_input_gradients_match_the_reference_formula(name)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [KDSVD], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- properties ---------------------------------------------------------------------------------------------------

def test_kdsvd_rejects_non_spatial_features():
    with pytest.raises(ValueError):
        KDSVD()([torch.randn(2, 4)], [torch.randn(2, 4)])


# ---- adapter ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kdsvd"])
def test_adapter_loss_is_finite_and_trains_student_features_and_own_modules(name):
    adapter_loss_is_finite_and_trains_student_features_and_own_modules(name)
