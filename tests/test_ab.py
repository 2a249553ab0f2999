"""AB (Heo et al., AAAI 2019): golden values and gradients, stage weights, signature, init-stage adapter."""
import pytest
import torch

from distiller_zoo.AB import ABDistiller, ABLoss
from distiller_zoo.base import StepContext
from helper.errors import UserError
from tests.golden_classic2 import (E, GOLDEN, StubStudent, check_against_golden, grad_reaches, options, outputs_for,
                                   parameters_of, probe_for, tensors)


# ---- golden values and gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["AB"], ids=lambda c: f"margin{c['params']['margin']}")
def test_ab_loss_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("g_s", "g_t")}
    criterion = ABLoss(case["params"]["feat_num"], margin=case["params"]["margin"])
    check_against_golden(case, criterion(inputs["g_s"], inputs["g_t"]), inputs)


def test_ab_weights_double_towards_the_deepest_stage():
    assert ABLoss(3).w == [0.25, 0.5, 1]


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (ABLoss.__init__, [("feat_num", E, False), ("margin", 1.0, False)]),
    (ABLoss.forward, [("g_s", E, False), ("g_t", E, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_peer(fn, expected):
    assert parameters_of(fn) == expected


# ---- Distiller adapter --------------------------------------------------------------------------------------------

def test_abound_init_trains_connector_on_stage_feats_and_main_stage_adds_nothing():
    distiller = ABDistiller(options(ABDistiller), probe_for(), StubStudent(), None)
    assert ABDistiller.needs.preact and ABDistiller.needs.init_stage
    out_s, out_t = outputs_for()
    student = StubStudent()
    assert distiller.init_modules(student)[0] is distiller.connector
    assert list(distiller.init_modules(student)[1].parameters())[0] is student.body.weight
    loss = distiller.init_loss(out_s, out_t, None, StepContext())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(grad_reaches(f) for f in out_s.stage_feats)
    assert grad_reaches(distiller.connector)
    assert distiller.loss(out_s, out_t, None, StepContext()) == {}
    assert distiller.param_groups(None) == []


@pytest.mark.parametrize("student", [((16, 32), (32, 16)), ((16, 32, 64), (8, 4, 2))], ids=["stages", "size"])
def test_abound_rejects_incompatible_stages_at_construction(student):
    with pytest.raises(UserError):
        ABDistiller(options(ABDistiller), probe_for(student=student), StubStudent(), None)


def test_a_student_without_get_feat_modules_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"--distill abound needs the student's get_feat_modules\(\), which Linear"):
        ABDistiller(options(ABDistiller), probe_for(), torch.nn.Linear(1, 1), None)
