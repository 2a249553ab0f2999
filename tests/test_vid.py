"""VID (Ahn et al., CVPR 2019): golden values and gradients, signature, initial variance, adapter."""
import pytest
import torch

from distiller_zoo.VID import VIDLoss
from tests.golden_classic1 import (adapter_loss_is_finite_and_trains_student_features_and_own_modules, cases_of,
                                   constructor_and_forward_keep_repdistillers_signatures,
                                   loss_value_and_input_gradients_match_the_reference_formula)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("VIDLoss"))
def test_loss_value_and_input_gradients_match_the_reference_formula(name):
    loss_value_and_input_gradients_match_the_reference_formula(name)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [VIDLoss], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- properties ---------------------------------------------------------------------------------------------------

def test_vid_initial_variance_is_init_pred_var():
    vid = VIDLoss(3, 4, 5, init_pred_var=2.0, eps=1e-5)
    variance = torch.nn.functional.softplus(vid.log_scale.double()) + 1e-5
    torch.testing.assert_close(variance, torch.full((5,), 2.0, dtype=torch.float64), rtol=1e-6, atol=0)


# ---- adapter ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vid"])
def test_adapter_loss_is_finite_and_trains_student_features_and_own_modules(name):
    adapter_loss_is_finite_and_trains_student_features_and_own_modules(name)
