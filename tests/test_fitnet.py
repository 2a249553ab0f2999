"""FitNet (Romero et al., ICLR 2015): golden value and gradients, signature, adapter, --hint_layer refusals."""
import pytest

from distiller_zoo.FitNet import HintLoss
from helper.errors import UserError
from tests.golden_classic1 import (TEACHER, adapter_loss_is_finite_and_trains_student_features_and_own_modules, build,
                                   cases_of, constructor_and_forward_keep_repdistillers_signatures,
                                   loss_value_and_input_gradients_match_the_reference_formula)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("HintLoss"))
def test_loss_value_and_input_gradients_match_the_reference_formula(name):
    loss_value_and_input_gradients_match_the_reference_formula(name)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [HintLoss], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- adapter ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hint"])
def test_adapter_loss_is_finite_and_trains_student_features_and_own_modules(name):
    adapter_loss_is_finite_and_trains_student_features_and_own_modules(name)


def test_hint_regresses_onto_the_teacher_layer_chosen_by_hint_layer():
    distiller = build("hint", hint_layer=3)
    assert distiller.regress_s.conv.out_channels == TEACHER[0][3]


def test_incompatible_architectures_fail_at_construction():
    with pytest.raises(UserError, match="--hint_layer"):
        build("hint", hint_layer=4)
    with pytest.raises(UserError, match="--hint_layer"):
        build("hint", teacher=([32, 32, 64, 128], [32, 32, 32, 8], 128), student=([16, 16, 32, 64], [32, 32, 8, 8], 64))
    with pytest.raises(UserError, match="kdsvd"):
        build("kdsvd")
