"""MLKD (Jin, Wang, Lin, CVPR 2023): golden level losses and both modes, masks, signatures, adapter."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import distiller_zoo
from distiller_zoo.base import Batch, ModelOutput, StepContext, get_distiller_class
from distiller_zoo.DIST import DIST
from distiller_zoo.ICKD import ICKDLoss
from distiller_zoo.KD import normalize
from distiller_zoo.MLKD import MLKDDistiller, MLKDLoss, bc_loss, cc_loss, confidence_masks, kd_loss
from helper.errors import UserError
from tests.golden_dist_mlkd_ickd import GOLDEN, assert_grads, decoded_inputs, logit_probe, make_opt
from tests.golden_json import assert_close, decode

MLKD_FUNCTIONS = {"kd_loss": kd_loss, "cc_loss": cc_loss, "bc_loss": bc_loss}
MLKD_INPUTS = ("logits_student_weak", "logits_student_strong", "logits_teacher_weak", "logits_teacher_strong")


# ---- golden values and gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["MLKD_functions"],
                         ids=lambda c: "{}_T{}_reduce{}".format(c["fn"], c["kwargs"]["temperature"],
                                                                c["kwargs"]["reduce"]) + (
                             "_ls" if c["kwargs"].get("logit_stand") else ""))
def test_mlkd_level_losses_match_the_official_formulas_with_gradients(case):
    inputs = decoded_inputs(case)
    out = MLKD_FUNCTIONS[case["fn"]](inputs["logits_student"], inputs["logits_teacher"], **case["kwargs"])
    assert_close(out, decode(case["output"]))
    assert_grads((decode(case["weights"]) * out).sum(), inputs, case["grads"])


def mlkd_id(case):
    init = case["init"]
    batch = case["inputs"]["logits_student_weak"]["shape"][0]
    return "{}_B{}_T{}{}".format("faithful" if init["faithful"] else "paper", batch, init["temperature"],
                                 "_ls" if init["logit_stand"] else "")


@pytest.mark.parametrize("case", GOLDEN["MLKDLoss"], ids=mlkd_id)
def test_mlkd_loss_matches_the_reference_in_both_modes_with_gradients(case):
    inputs = decoded_inputs(case, MLKD_INPUTS)
    terms = MLKDLoss(**case["init"])(*inputs.values())
    assert len(terms) == 3 and all(t.dim() == 0 for t in terms)
    for term, expected_value, expected_grads in zip(terms, case["values"], case["grads"]):
        assert_close(term, decode(expected_value))
        assert_grads(term, inputs, expected_grads)


@pytest.mark.parametrize("case", GOLDEN["MLKDLoss"][:4:2], ids=mlkd_id)
def test_mlkd_masks_keep_the_less_confident_half_by_the_median(case):
    sample_mask, class_mask = confidence_masks(decode(case["inputs"]["logits_teacher_weak"]))
    assert_close(sample_mask.double(), decode(case["sample_mask"]))
    assert_close(class_mask.double(), decode(case["class_mask"]))


# ---- official names, signatures -----------------------------------------------------------------------------------

def params_of(fn):
    return [(name, p.default) for name, p in inspect.signature(fn).parameters.items()]


def test_public_names_and_signatures_are_the_official_ones():
    empty = inspect.Parameter.empty
    assert distiller_zoo.DIST is DIST and distiller_zoo.MLKDLoss is MLKDLoss and distiller_zoo.ICKDLoss is ICKDLoss
    assert distiller_zoo.MLKD.kd_loss is kd_loss
    assert params_of(DIST.__init__) == [("self", empty), ("beta", 1.0), ("gamma", 1.0), ("tau", 1.0)]
    assert params_of(DIST.forward) == [("self", empty), ("z_s", empty), ("z_t", empty)]
    assert params_of(kd_loss) == [("logits_student", empty), ("logits_teacher", empty), ("temperature", empty),
                                  ("reduce", True), ("logit_stand", False)]
    for fn in (cc_loss, bc_loss):
        assert params_of(fn) == [("logits_student", empty), ("logits_teacher", empty), ("temperature", empty),
                                 ("reduce", True)]
    assert params_of(MLKDLoss.__init__) == [("self", empty), ("temperature", 4.0), ("logit_stand", False),
                                            ("faithful", False)]
    assert [name for name, _ in params_of(MLKDLoss.forward)][:5] == ["self", *MLKD_INPUTS]
    assert params_of(ICKDLoss.forward) == [("self", empty), ("g_s", empty), ("g_t", empty)]
    assert [name for name, _ in params_of(ICKDLoss.__init__)][:2] == ["self", "opt"]


# ---- properties ---------------------------------------------------------------------------------------------------

def test_mlkd_modes_differ_only_where_the_code_does():
    views = [torch.randn(8, 10, dtype=torch.float64) * 3 for _ in range(4)]
    s_w, s_s, t_w, t_s = views
    paper, faithful = MLKDLoss()(*views), MLKDLoss(faithful=True)(*views)
    assert all(not torch.allclose(a, b) for a, b in zip(paper, faithful))
    temps = (4.0, 3.0, 5.0, 2.0, 6.0)
    half = 0.5  # 8 distinct confidences and 10 distinct class masses: the median keeps exactly half of each
    assert_close(faithful[2], half * sum(bc_loss(s_w, t_w, T) for T in temps))
    assert_close(faithful[1], half * sum(cc_loss(s_w, t_w, T) for T in temps))
    assert_close(faithful[0], half * sum(kd_loss(s_w, t_w, T) for T in temps) + sum(
        kd_loss(s_s, t_s, T) for T in temps[:3]) + kd_loss(s_w, t_w, 2.0) + kd_loss(s_w, t_w, 6.0))


def test_mlkd_kd_transform_standardises_only_the_kd_terms():
    views = [torch.randn(6, 5, dtype=torch.float64) * 3 for _ in range(4)]
    for faithful in (False, True):
        stand = MLKDLoss(2.0, logit_stand=True, faithful=faithful)(*views)
        via_transform = MLKDLoss(2.0, faithful=faithful)(*views, kd_transform=normalize)
        raw = MLKDLoss(2.0, faithful=faithful)(*views)
        for a, b in zip(stand, via_transform):
            assert_close(a, b)
        assert not torch.allclose(stand[0], raw[0])
        assert_close(stand[1], raw[1])
        assert_close(stand[2], raw[2])


# ---- adapter ------------------------------------------------------------------------------------------------------

def mlkd_outputs(batch=6, classes=10):
    s_w, s_s = torch.randn(batch, classes, requires_grad=True), torch.randn(batch, classes, requires_grad=True)
    t_w, t_s = torch.randn(batch, classes) * 3, torch.randn(batch, classes) * 3
    out_s = ModelOutput(s_w, strong=ModelOutput(s_s))
    out_t = ModelOutput(t_w, strong=ModelOutput(t_s))
    return out_s, out_t, torch.randint(0, classes, (batch,))


@pytest.mark.parametrize("faithful", [False, True])
def test_mlkd_adapter_returns_its_terms_and_the_strong_view_ce(faithful):
    opt = make_opt("mlkd", mlkd_faithful=faithful, mlkd_temperature=3.0)
    distiller = get_distiller_class("mlkd")(opt, logit_probe(), None, None)
    assert isinstance(distiller, MLKDDistiller)
    assert distiller.needs.strong_view and not distiller.needs.feats
    assert distiller.consumes == frozenset({"logit_transform"})
    assert distiller.term_weights(opt) == {"cls_strong": 0.1}
    out_s, out_t, targets = mlkd_outputs()
    terms = distiller.loss(out_s, out_t, Batch(None, targets), StepContext())
    assert list(terms) == ["mlkd_kd", "mlkd_cc", "mlkd_bc", "cls_strong"]
    expected = MLKDLoss(3.0, faithful=faithful)(out_s.logits, out_s.strong.logits, out_t.logits, out_t.strong.logits)
    for name, value in zip(["mlkd_kd", "mlkd_cc", "mlkd_bc"], expected):
        torch.testing.assert_close(terms[name], value)
    torch.testing.assert_close(terms["cls_strong"], F.cross_entropy(out_s.strong.logits, targets))
    sum(terms.values()).backward()
    assert out_s.logits.grad.abs().sum() > 0 and out_s.strong.logits.grad.abs().sum() > 0


def test_mlkd_adapter_passes_the_logit_standardisation_plugin_to_its_kd_terms():
    distiller = get_distiller_class("mlkd")(make_opt("mlkd", mlkd_temperature=2.0), logit_probe(), None, None)
    out_s, out_t, targets = mlkd_outputs()
    terms = distiller.loss(out_s, out_t, Batch(None, targets), StepContext(logit_transforms=(normalize,)))
    expected = MLKDLoss(2.0, logit_stand=True)(out_s.logits, out_s.strong.logits, out_t.logits, out_t.strong.logits)
    for name, value in zip(["mlkd_kd", "mlkd_cc", "mlkd_bc"], expected):
        torch.testing.assert_close(terms[name], value)


def test_mlkd_adapter_refuses_outputs_without_the_strong_view_and_a_bad_temperature():
    distiller = get_distiller_class("mlkd")(make_opt("mlkd"), logit_probe(), None, None)
    with pytest.raises(ValueError, match="strong"):
        distiller.loss(ModelOutput(torch.randn(2, 10)), ModelOutput(torch.randn(2, 10)),
                       Batch(None, torch.tensor([0, 1])), StepContext())
    with pytest.raises(UserError, match="--mlkd_temperature"):
        get_distiller_class("mlkd")(make_opt("mlkd", mlkd_temperature=0.0), logit_probe(), None, None)
    with pytest.raises(UserError, match="--dist_tau"):
        get_distiller_class("dist")(make_opt("dist", dist_tau=-1.0), logit_probe(), None, None)
