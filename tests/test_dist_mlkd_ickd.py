"""DIST, MLKD and ICKD: float64 golden values and gradients (both MLKD modes, ICKD's BatchNorm state), the official
names and signatures, and their Distiller adapters."""
import argparse
import inspect
import json
import os
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F

import distiller_zoo
from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, StepContext, get_distiller_class
from distiller_zoo.DIST import DIST, DISTDistiller
from distiller_zoo.ICKD import ICKDDistiller, ICKDLoss
from distiller_zoo.KD import normalize
from distiller_zoo.MLKD import MLKDDistiller, MLKDLoss, bc_loss, cc_loss, confidence_masks, kd_loss
from helper.errors import UserError
from models import build_model
from tests.golden_json import assert_close, decode, with_grad

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "fixtures", "dist_mlkd_ickd_golden.json")
with open(GOLDEN_PATH) as _f:
    GOLDEN = json.load(_f)

MLKD_FUNCTIONS = {"kd_loss": kd_loss, "cc_loss": cc_loss, "bc_loss": bc_loss}
MLKD_INPUTS = ("logits_student_weak", "logits_student_strong", "logits_teacher_weak", "logits_teacher_strong")


def decoded_inputs(case, names=None):
    names = names or list(case["inputs"])
    return {name: with_grad(decode(case["inputs"][name])) for name in names}


def assert_grads(value, inputs, expected):
    got = torch.autograd.grad(value, list(inputs.values()), retain_graph=True, allow_unused=True)
    for (name, tensor), grad in zip(inputs.items(), got):
        assert_close(torch.zeros_like(tensor) if grad is None else grad, decode(expected[name]))


# ---- golden values and gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["DIST"], ids=lambda c: "tau{tau}_b{beta}_g{gamma}".format(**c["init"]))
def test_dist_matches_the_official_formula_with_gradients(case):
    inputs = decoded_inputs(case)
    value = DIST(**case["init"])(inputs["z_s"], inputs["z_t"])
    assert value.dim() == 0
    assert_close(value, decode(case["value"]))
    assert_grads(value, inputs, case["grads"])


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


def build_ickd(case, faithful):
    dims = case["dims"]
    loss = ICKDLoss(Namespace(s_dim=dims["s_dim"], t_dim=dims["t_dim"], feat_dim=dims["t_dim"]), faithful).double()
    state = {name: decode(value) for name, value in {**case["params"], **case["buffers"]}.items()}
    missing = {k for k in loss.load_state_dict(state, strict=False).missing_keys if "num_batches" not in k}
    assert missing == ({k for k in loss.state_dict() if k.startswith("embed_t.") and "num_batches" not in k}
                       if faithful else set())
    return loss.train(case["train"])


@pytest.mark.parametrize("faithful", [False, True], ids=["default", "faithful"])
@pytest.mark.parametrize("case", GOLDEN["ICKD"], ids=lambda c: "train" if c["train"] else "eval")
def test_ickd_matches_the_official_formula_with_gradients_and_batchnorm_state(case, faithful):
    loss = build_ickd(case, faithful)
    inputs = decoded_inputs(case)
    values = loss([inputs["f_s"]], [inputs["f_t"]])
    assert isinstance(values, list) and len(values) == 1 and values[0].dim() == 0
    assert_close(values[0], decode(case["value"]))
    params = dict(loss.embed_s.named_parameters(prefix="embed_s"))
    assert_grads(values[0], {**inputs, **params}, case["grads"])
    for name, expected in case["buffers_after"].items():
        assert_close(loss.state_dict()[name], decode(expected))
    if faithful:
        assert all(p.grad is None and not p.requires_grad for p in loss.embed_t.parameters())


# ---- official names, signatures, structure ------------------------------------------------------------------------

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


def test_ickd_state_dict_keeps_the_official_keys_and_builds_the_teacher_embedding_only_when_faithful():
    opt = Namespace(s_dim=32, t_dim=64, feat_dim=64)
    embed_s = ["embed_s.conv2d.weight", "embed_s.l2norm.weight", "embed_s.l2norm.bias",
               "embed_s.l2norm.running_mean", "embed_s.l2norm.running_var", "embed_s.l2norm.num_batches_tracked"]
    assert list(ICKDLoss(opt).state_dict()) == embed_s
    faithful = ICKDLoss(opt, faithful=True)
    assert list(faithful.state_dict()) == embed_s + [k.replace("embed_s", "embed_t") for k in embed_s]
    assert faithful.embed_t.conv2d.weight.shape == (64, 32, 1, 1)  # official: Embed(s_dim, feat_dim)
    assert isinstance(faithful.embed_s.l2norm, torch.nn.BatchNorm2d)
    with pytest.raises(UserError, match="t_dim"):
        ICKDLoss(Namespace(s_dim=32, t_dim=64, feat_dim=128))


# ---- properties ---------------------------------------------------------------------------------------------------

def test_dist_is_invariant_to_logit_shifts_and_zero_for_identical_logits():
    z = torch.randn(8, 10, dtype=torch.float64)
    loss = DIST(tau=4.0)
    assert 0 <= loss(z, z) < 1e-3  # not exactly 0: the official eps 1e-8 next to small centred norms
    assert_close(loss(z + 3.0, z - 1.5), loss(z, z))


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


def test_losses_compute_in_float32_under_bf16_autocast():
    z = [torch.randn(6, 10) for _ in range(4)]
    ickd = ICKDLoss(Namespace(s_dim=4, t_dim=3, feat_dim=3))
    f_s, f_t = torch.randn(6, 4, 4, 4), torch.randn(6, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = [t.bfloat16() for t in z]
        dist = DIST(tau=4.0)(half[0], half[2])
        mlkd = MLKDLoss()(*half)
        ickd_value = ickd([f_s.bfloat16()], [f_t.bfloat16()])[0]
    assert dist.dtype == ickd_value.dtype == torch.float32 and all(t.dtype == torch.float32 for t in mlkd)
    exact = [t.bfloat16().float() for t in z]
    torch.testing.assert_close(dist, DIST(tau=4.0)(exact[0], exact[2]))
    for a, b in zip(mlkd, MLKDLoss()(*exact)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ickd_value, ickd([f_s.bfloat16().float()], [f_t.bfloat16().float()])[0])


# ---- adapters -----------------------------------------------------------------------------------------------------

def adapter_defaults(name):
    parser = argparse.ArgumentParser()
    get_distiller_class(name).add_args(parser)
    return vars(parser.parse_args([]))


def make_opt(name, **overrides):
    opt = argparse.Namespace(**adapter_defaults(name), gamma=0.1, alpha=0.0, beta=0.9, kd_T=4, feat_dim=128)
    for key, value in overrides.items():
        setattr(opt, key, value)
    return opt


def logit_probe(classes=10):
    return ProbeShapes(feat_s=[], feat_t=[], logit_s=torch.randn(2, classes), logit_t=torch.randn(2, classes),
                       n_data=100, num_classes=classes)


def test_adapter_flags_keep_the_official_names_and_defaults():
    assert adapter_defaults("dist") == {"dist_beta": 1.0, "dist_gamma": 1.0, "dist_tau": 1.0}
    assert adapter_defaults("mlkd") == {"mlkd_temperature": 4.0, "mlkd_faithful": False}
    assert adapter_defaults("ickd") == {"ickd_faithful": False}


def test_dist_adapter_returns_the_dist_term_on_logits():
    distiller = get_distiller_class("dist")(make_opt("dist", dist_tau=4.0, dist_beta=2.0), logit_probe(), None, None)
    assert isinstance(distiller, DISTDistiller) and not distiller.needs.feats and not list(distiller.parameters())
    y_s, y_t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
    terms = distiller.loss(ModelOutput(y_s), ModelOutput(y_t), Batch(None, torch.arange(4)), StepContext())
    assert list(terms) == ["dist"]
    torch.testing.assert_close(terms["dist"], DIST(2.0, 1.0, 4.0)(y_s, y_t))


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


def model_outputs(name, x):
    model = build_model(name, 100).eval()
    feats, logits = model(x, is_feat=True)
    return ModelOutput(logits, feats)


@pytest.mark.parametrize("student,teacher", [("resnet8x4", "resnet32x4"), ("wrn_16_2", "wrn_40_2")])
@pytest.mark.parametrize("faithful", [False, True])
def test_ickd_adapter_embeds_the_students_last_stage_to_the_teachers_width(student, teacher, faithful):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    out_s, out_t = model_outputs(student, x), model_outputs(teacher, x)
    probe = ProbeShapes(out_s.feats, out_t.feats, out_s.logits, out_t.logits, n_data=10, num_classes=100)
    distiller = get_distiller_class("ickd")(make_opt("ickd", ickd_faithful=faithful), probe, None, None)
    assert isinstance(distiller, ICKDDistiller) and distiller.needs.feats and not distiller.needs.preact
    s_dim, t_dim = out_s.last_stage.shape[1], out_t.last_stage.shape[1]
    assert distiller.criterion.embed_s.conv2d.weight.shape == (t_dim, s_dim, 1, 1)
    assert hasattr(distiller.criterion, "embed_t") == faithful
    trainable = [name for name, p in distiller.named_parameters() if p.requires_grad]
    assert trainable == ["criterion.embed_s.conv2d.weight", "criterion.embed_s.l2norm.weight",
                         "criterion.embed_s.l2norm.bias"]
    feat_s = out_s.last_stage.detach().requires_grad_(True)
    out_s.feats[-2] = feat_s
    terms = distiller.loss(out_s, out_t, Batch(x, torch.tensor([0, 1])), StepContext())
    assert list(terms) == ["ickd"] and terms["ickd"].dim() == 0
    expected = distiller.criterion.batch_loss(feat_s, out_t.last_stage)
    torch.testing.assert_close(terms["ickd"], expected)
    terms["ickd"].backward()
    assert feat_s.grad.abs().sum() > 0 and distiller.criterion.embed_s.conv2d.weight.grad.abs().sum() > 0
