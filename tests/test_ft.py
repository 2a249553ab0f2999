"""FT (Kim et al., NeurIPS 2018): golden values and gradients, signature, paraphraser and translator adapter."""
import pytest
import torch

from distiller_zoo.base import StepContext
from distiller_zoo.FT import FactorTransfer, FactorTransferDistiller
from tests.golden_classic2 import (E, GOLDEN, StubStudent, check_against_golden, grad_reaches, options, outputs_for,
                                   parameters_of, probe_for, tensors)


# ---- golden values and gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["FT"], ids=lambda c: f"p{c['params']['p1']}{c['params']['p2']}")
def test_factor_transfer_matches_repdistiller_values_and_gradients(case):
    inputs = {name: tensors(case["inputs"][name]) for name in ("f_s", "f_t")}
    criterion = FactorTransfer(**case["params"])
    check_against_golden(case, criterion(inputs["f_s"][0], inputs["f_t"][0]), inputs)


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (FactorTransfer.__init__, [("p1", 2, False), ("p2", 1, False)]),
    (FactorTransfer.forward, [("f_s", E, False), ("f_t", E, False)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_peer(fn, expected):
    assert parameters_of(fn) == expected


# ---- Distiller adapter --------------------------------------------------------------------------------------------

def test_factor_main_stage_trains_translator_against_frozen_eval_paraphraser():
    distiller = FactorTransferDistiller(options(FactorTransferDistiller), probe_for(), None, None)
    out_s, out_t = outputs_for()
    assert distiller.init_modules(StubStudent()) == [distiller.paraphraser]
    init_loss = distiller.init_loss(out_s, out_t, None, StepContext())
    init_loss.backward()
    assert torch.isfinite(init_loss) and grad_reaches(distiller.paraphraser)
    assert not grad_reaches(distiller.translator)

    distiller.on_init_end()
    distiller.train()
    assert distiller.translator.training and not distiller.paraphraser.training
    terms = distiller.loss(out_s, out_t, None, StepContext())
    terms["factor"].backward()
    assert set(terms) == {"factor"} and torch.isfinite(terms["factor"])
    assert grad_reaches(out_s.last_stage) and grad_reaches(distiller.translator)
    trained = {id(p) for group in distiller.param_groups(None) for p in group["params"]}
    assert trained == {id(p) for p in distiller.translator.parameters()}


def test_factor_main_optimizer_gets_only_the_translator_even_without_init_stage():
    distiller = FactorTransferDistiller(options(FactorTransferDistiller), probe_for(), None, None)
    distiller.train()
    trained = {id(p) for group in distiller.param_groups(None) for p in group["params"]}
    assert trained == {id(p) for p in distiller.translator.parameters()}
    assert distiller.translator.training and not distiller.paraphraser.training
