"""FSP (Yim et al., CVPR 2017): golden value and gradients, signature, init-stage adapter, channel checks."""
import pytest
import torch

from distiller_zoo.base import StepContext
from distiller_zoo.FSP import FSP, FSPDistiller
from helper.errors import UserError
from tests.golden_classic2 import (E, GOLDEN, StubStudent, check_against_golden, grad_reaches, options, outputs_for,
                                   parameters_of, probe_for, tensors)


# ---- golden value and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["FSP"])
def test_fsp_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("g_s", "g_t")}
    criterion = FSP(case["params"]["s_shapes"], case["params"]["t_shapes"])
    check_against_golden(case, criterion(inputs["g_s"], inputs["g_t"]), inputs)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (FSP.__init__, [("s_shapes", E, False), ("t_shapes", E, False)]),
    (FSP.forward, [("g_s", E, False), ("g_t", E, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_peer(fn, expected):
    assert parameters_of(fn) == expected


# ---- Distiller adapter --------------------------------------------------------------------------------------------

def test_fsp_init_trains_student_on_all_maps_and_main_stage_adds_nothing():
    same = ((16, 32, 64), (32, 16, 8))
    distiller = FSPDistiller(options(FSPDistiller), probe_for(student=same, teacher=same), StubStudent(), None)
    out_s, out_t = outputs_for(student=same, teacher=same)
    loss = distiller.init_loss(out_s, out_t, None, StepContext())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(grad_reaches(f) for f in out_s.all_but_pooled)
    assert distiller.loss(out_s, out_t, None, StepContext()) == {}
    assert distiller.param_groups(None) == []


def test_fsp_rejects_channel_mismatch_naming_the_maps():
    with pytest.raises(UserError, match=r"equal .*channel counts.*feats\[0\] 16 vs 32.*feats\[3\] 64 vs 128"):
        FSPDistiller(options(FSPDistiller), probe_for(), StubStudent(), None)
