"""PKT (Passalis and Tefas, ECCV 2018): golden value and gradients, signature, adapter."""
import pytest

from distiller_zoo.PKT import PKT
from tests.golden_classic1 import (adapter_loss_is_finite_and_trains_student_features_and_own_modules, cases_of,
                                   constructor_and_forward_keep_repdistillers_signatures,
                                   loss_value_and_input_gradients_match_the_reference_formula)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("PKT"))
def test_loss_value_and_input_gradients_match_the_reference_formula(name):
    loss_value_and_input_gradients_match_the_reference_formula(name)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [PKT], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- adapter ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pkt"])
def test_adapter_loss_is_finite_and_trains_student_features_and_own_modules(name):
    adapter_loss_is_finite_and_trains_student_features_and_own_modules(name)
