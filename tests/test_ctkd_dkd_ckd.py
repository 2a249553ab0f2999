"""CTKD's learnable temperature, DKD and CKD: golden values/gradients, signatures, curriculum and adapters."""
import argparse
import inspect
import json
import math
import os

import pytest
import torch

from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, get_distiller_class, StepContext
from distiller_zoo.CKD import CKDLoss
from distiller_zoo.CTKD import (GradientReversal, GradientReversalFunction, Global_T, Instance_T, add_ctkd_args,
                                build_temperature, curriculum_lambda, map_temperature, stats)
from distiller_zoo.DKD import DKDloss, warmup_factor
from distiller_zoo.KD import DistillKL
from helper.errors import UserError

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "headline_golden.json")
with open(GOLDEN) as _f:
    CASES = json.load(_f)

TOL = dict(rtol=1e-9, atol=1e-12)


def decode(x, grad=False):
    """JSON tensors ({"shape", "data"}) to float64 tensors (leaves needing grad if asked); other values unchanged."""
    if not isinstance(x, dict):
        return x
    t = torch.tensor(x["data"], dtype=torch.float64).reshape(x["shape"])
    return t.requires_grad_(grad)


def close(actual, expected):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **TOL)


def cases_of(kind):
    return sorted(name for name, case in CASES.items() if case["kind"] == kind)


# ---- golden values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("DKDloss") + cases_of("CKDLoss"))
def test_loss_value_and_gradients_match_the_float64_reference(name):
    case = CASES[name]
    inputs = {k: decode(v, grad=True) for k, v in case["inputs"].items()}
    if "target" in inputs:
        inputs["target"] = inputs["target"].detach().long()
    module = DKDloss() if case["kind"] == "DKDloss" else CKDLoss(**case["init"])
    value = module(**inputs)
    close(value, decode(case["value"]))
    value.backward()
    for k, expected in case["grads"].items():
        close(inputs[k].grad, decode(expected))


def build_module(case):
    init = {k: v for k, v in case["init"].items() if k not in ("t_start", "t_end")}
    module = (Global_T if case["kind"] == "Global_T" else Instance_T)(**init).double()
    module.load_state_dict({k: decode(v) for k, v in case["params"].items()})
    return module


@pytest.mark.parametrize("name", cases_of("Global_T") + cases_of("Instance_T"))
def test_temperature_and_its_reversed_gradient_match_the_reference(name):
    case = CASES[name]
    module = build_module(case)
    y_s, y_t = (decode(case["inputs"][k], grad=True) for k in ("y_s", "y_t"))
    temp = map_temperature(module(y_t, y_s, case["lambda"]), case["init"]["t_start"], case["init"]["t_end"])
    close(temp, decode(case["temperature"]))
    loss = DistillKL(4)(y_s, y_t, temp)
    close(loss.reshape(()), decode(case["value"]))
    loss.sum().backward()
    close(y_s.grad, decode(case["grads"]["y_s"]))
    close(y_t.grad, decode(case["grads"]["y_t"]))
    for k, p in module.named_parameters():
        close(p.grad, decode(case["param_grads"][k]))


def test_gradient_reversal_is_identity_forward_and_scales_the_gradient_by_lambda():
    case = CASES["grl"]
    x, w = decode(case["inputs"]["x"], grad=True), decode(case["inputs"]["w"])
    y = GradientReversal()(x, case["lambda"])
    close(y, x.detach())
    value = (w * y * y).sum()
    close(value, decode(case["value"]))
    value.backward()
    close(x.grad, decode(case["grads"]["x"]))


# ---- signatures, defaults, flags ----------------------------------------------------------------------------------

def test_public_signatures_keep_the_official_names():
    def args(fn):
        return list(inspect.signature(fn).parameters)

    assert args(DKDloss.forward) == ["self", "logits_student", "logits_teacher", "target", "alpha", "beta",
                                     "temperature"]
    assert args(CKDLoss.__init__) == ["self", "T"] and inspect.signature(CKDLoss).parameters["T"].default == 1.0
    assert args(CKDLoss.forward) == ["self", "y_s", "y_t"]
    assert args(Global_T.forward) == ["self", "fake_input1", "fake_input2", "lambda_"]
    assert args(Global_T.__init__) == ["self"]
    assert args(Instance_T.forward) == ["self", "logit_t", "logit_s", "lambda_"]
    assert args(GradientReversal.forward) == ["self", "x", "lambda_"]
    assert args(GradientReversalFunction.forward) == ["ctx", "x", "lambda_"]


def test_global_temperature_starts_where_ctkd_starts_and_instance_matches_it():
    glob = Global_T()
    assert list(glob.state_dict()) == ["global_T"]
    raw = glob(torch.randn(3, 5), torch.randn(3, 5), 0.0)  # CTKD's interface: the raw parameter, mapped by the caller
    torch.testing.assert_close(raw, torch.tensor([1.0]))
    start = 1 + 20 / (1 + math.exp(-1))
    torch.testing.assert_close(map_temperature(raw, 1, 20), torch.tensor([start]))
    inst = Instance_T(5)
    assert list(inst.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert inst.mlp[0].out_features == 256 and inst.mlp[2].bias.item() == 1.0
    assert inst(torch.randn(3, 5), torch.randn(3, 5), 0.0).shape == (3, 1)


def parse(argv=()):
    parser = argparse.ArgumentParser()
    add_ctkd_args(parser)
    return parser.parse_args(list(argv))


def test_ctkd_flags_keep_ctkds_names_with_a_working_curriculum_by_default():
    assert vars(parse()) == {"have_mlp": 0, "mlp_name": "global", "t_start": 1, "t_end": 20, "cosine_decay": 1,
                             "decay_max": 0, "decay_min": -1, "decay_loops": 10}


def test_build_temperature_follows_the_flags_and_rejects_unusable_ones():
    assert build_temperature(parse(), 10) is None
    assert isinstance(build_temperature(parse(["--have_mlp", "1"]), 10), Global_T)
    inst = build_temperature(parse(["--have_mlp", "1", "--mlp_name", "instance", "--t_start", "2"]), 10)
    assert isinstance(inst, Instance_T) and inst.mlp[0].in_features == 20
    for bad in (["--decay_loops", "0"], ["--t_start", "0"], ["--t_end", "-1"]):
        with pytest.raises(UserError):
            build_temperature(parse(["--have_mlp", "1"] + bad), 10)
    opt = parse(["--have_mlp", "1"])
    opt.mlp_name = "mlp"
    with pytest.raises(UserError, match="--mlp_name"):
        build_temperature(opt, 10)


# ---- curriculum ---------------------------------------------------------------------------------------------------

def test_cosine_curriculum_matches_ctkd_at_the_boundaries():
    opt = parse()
    first = -1 + (math.cos(math.pi / 10) + 1) / 2
    expected = {-3: 0.0, 0: 0.0, 1: first, 5: -0.5, 9: -1 + (math.cos(9 * math.pi / 10) + 1) / 2, 10: -1.0,
                11: -1.0, 240: -1.0}
    for epoch, value in expected.items():
        assert curriculum_lambda(epoch, opt) == pytest.approx(value, abs=1e-12), epoch
    values = [curriculum_lambda(e, opt) for e in range(0, 13)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_curriculum_goes_from_max_to_min_and_stays_there():
    opt = parse(["--cosine_decay", "0"])
    for epoch, value in {0: 0.0, 1: -0.1, 9: -0.9, 10: -1.0, 30: -1.0}.items():
        assert curriculum_lambda(epoch, opt) == pytest.approx(value, abs=1e-12), epoch
    shifted = parse(["--cosine_decay", "0", "--decay_max", "0.5", "--decay_loops", "3"])
    assert [curriculum_lambda(e, shifted) for e in (0, 1, 3)] == pytest.approx([0.5, 0.0, -1.0])


def test_curriculum_rejects_zero_loops_instead_of_dividing_by_zero():
    with pytest.raises(UserError, match="--decay_loops"):
        curriculum_lambda(1, parse(["--decay_loops", "0"]))


# ---- the temperature learns in the curriculum's direction ---------------------------------------------------------

def kd_loss(y_s, y_t, targets, temp):
    return DistillKL(4)(y_s, y_t, temp).sum()


def dkd_loss(y_s, y_t, targets, temp):
    return DKDloss()(y_s, y_t, targets, 1.0, 8.0, temp)


def temperature_grads(module, loss_fn, y_s, y_t, targets, lam, autocast):
    """Gradients of loss_fn w.r.t. the module's parameters, with the temperature built under `autocast`."""
    module.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.autocast("cpu", enabled=False):  # as the CTKD plug-in computes it
            temp = map_temperature(module(y_t.float(), y_s.float(), lam), 1, 20)
        assert temp.dtype == torch.float32
        loss_fn(y_s, y_t, targets, temp).backward()
    return [p.grad.clone() for p in module.parameters()]


def logits_pair(autocast):
    """Student and teacher logits [8, 10] as a network would make them (bf16 under autocast)."""
    torch.manual_seed(0)
    head, feats = torch.nn.Linear(16, 10), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y_s, y_t = head(feats), head(feats + torch.randn(8, 16)) * 2
    return y_s.detach(), y_t.detach(), torch.randint(0, 10, (8,))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("loss_fn", [kd_loss, dkd_loss], ids=["kd", "dkd"])
@pytest.mark.parametrize("make", [Global_T, lambda: Instance_T(10)], ids=["global", "instance"])
def test_temperature_ascends_the_distillation_loss_when_lambda_is_negative(make, loss_fn, autocast):
    y_s, y_t, targets = logits_pair(autocast)
    assert y_s.dtype == (torch.bfloat16 if autocast else torch.float32)
    module = make()
    plain = temperature_grads(module, loss_fn, y_s, y_t, targets, 1.0, autocast)
    assert all(g.dtype == torch.float32 for g in plain) and any(g.abs().sum() > 0 for g in plain)
    for g_rev, g in zip(temperature_grads(module, loss_fn, y_s, y_t, targets, -0.5, autocast), plain):
        torch.testing.assert_close(g_rev, -0.5 * g)
    assert all(g.abs().sum() == 0 for g in temperature_grads(module, loss_fn, y_s, y_t, targets, 0.0, autocast))

    def loss_after_step(lam):
        stepped = make()
        stepped.load_state_dict(module.state_dict())
        grads = temperature_grads(stepped, loss_fn, y_s, y_t, targets, lam, autocast)
        with torch.no_grad():
            for p, g in zip(stepped.parameters(), grads):
                p -= 1e-3 * g
            s64, t64 = y_s.double(), y_t.double()
            return loss_fn(s64, t64, targets, map_temperature(stepped(t64.float(), s64.float(), 0.0), 1, 20).double()).item()

    with torch.no_grad():
        before = loss_fn(y_s.double(), y_t.double(), targets,
                         map_temperature(module(y_t.float(), y_s.float(), 0.0), 1, 20).double()).item()
    assert loss_after_step(-1.0) > before > loss_after_step(1.0)


def test_instance_temperature_sends_no_gradient_into_the_logits():
    y_s = torch.randn(4, 6, requires_grad=True)
    Instance_T(6)(torch.randn(4, 6), y_s, -1.0).sum().backward()
    assert y_s.grad is None


def test_stats_report_mean_and_spread_without_gradients():
    glob = stats(map_temperature(Global_T()(torch.randn(2, 3), torch.randn(2, 3), 0.0), 1, 20))
    assert glob["temp_std"].item() == 0.0 and glob["temp_mean"].item() == pytest.approx(1 + 20 / (1 + math.exp(-1)))
    temp = torch.tensor([[2.0], [4.0]], dtype=torch.float64, requires_grad=True)
    result = stats(temp)
    assert result["temp_mean"].item() == 3.0 and result["temp_std"].item() == 1.0
    assert all(v.dim() == 0 and v.dtype == torch.float32 and not v.requires_grad for v in result.values())


# ---- DKD and CKD properties ----------------------------------------------------------------------------------------

def test_dkd_temperature_forms_agree_and_per_sample_temperatures_weight_each_sample():
    y_s, y_t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4])
    dkd = DKDloss()
    ref = dkd(y_s, y_t, target, 1.0, 8.0, 3.0)
    close(dkd(y_s, y_t, target, 1.0, 8.0, torch.tensor([3.0], dtype=torch.float64)), ref)
    close(dkd(y_s, y_t, target, 1.0, 8.0, torch.full((5, 1), 3.0, dtype=torch.float64)), ref)
    temps = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    per_sample = sum(dkd(y_s[i:i + 1], y_t[i:i + 1], target[i:i + 1], 1.0, 8.0, temps[i].item()) for i in range(5))
    close(dkd(y_s, y_t, target, 1.0, 8.0, temps), per_sample / 5)


def test_dkd_gradients_stay_finite_when_the_teachers_probabilities_underflow():
    y_s, temp = torch.randn(2, 3, requires_grad=True), torch.ones(2, 1, requires_grad=True)
    y_t = torch.tensor([[0.0, 300.0, 0.0], [300.0, 0.0, 0.0]])
    loss = DKDloss()(y_s, y_t, torch.tensor([0, 1]), 1.0, 8.0, temp)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(temp.grad).all() and torch.isfinite(y_s.grad).all()


def test_dkd_and_ckd_compute_in_float32_under_bf16_autocast():
    y_s, y_t, target = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dkd = DKDloss()(y_s.bfloat16(), y_t.bfloat16(), target, 1.0, 8.0, 4.0)
        ckd = CKDLoss(0.1)(y_s.bfloat16(), y_t.bfloat16())
    assert dkd.dtype == ckd.dtype == torch.float32
    torch.testing.assert_close(dkd, DKDloss()(y_s.bfloat16().float(), y_t.bfloat16().float(), target, 1.0, 8.0, 4.0))
    torch.testing.assert_close(ckd, CKDLoss(0.1)(y_s.bfloat16().float(), y_t.bfloat16().float()))


def test_ckd_is_one_directional_and_ignores_logit_scale():
    y_s, y_t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    ckd = CKDLoss(0.5)
    assert not torch.allclose(ckd(y_s, y_t), ckd(y_t, y_s))
    close(ckd(y_s * torch.rand(6, 1, dtype=torch.float64) * 5, y_t * 3), ckd(y_s, y_t))


# ---- adapters -----------------------------------------------------------------------------------------------------

def make_opt(**overrides):
    opt = dict(dkd_alpha=1.0, dkd_beta=8.0, dkd_T=4.0, warmup=20, ckd_T=1.0)
    opt.update(overrides)
    return argparse.Namespace(**opt)


def build(name, **opt):
    probe = ProbeShapes(feat_s=[], feat_t=[], logit_s=torch.randn(2, 10), logit_t=torch.randn(2, 10), n_data=100,
                        num_classes=10)
    return get_distiller_class(name)(make_opt(**opt), probe, torch.nn.Identity(), torch.nn.Identity())


def adapter_defaults(name):
    parser = argparse.ArgumentParser()
    get_distiller_class(name).add_args(parser)
    return vars(parser.parse_args([]))


def outputs():
    y_s = torch.randn(4, 10, requires_grad=True)
    return ModelOutput(y_s), ModelOutput(torch.randn(4, 10)), torch.tensor([1, 2, 3, 4])


def test_dkd_adapter_uses_its_temperature_or_ctkds_and_ramps_in_over_the_warmup():
    assert adapter_defaults("dkd") == {"dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_T": 4.0, "warmup": 20}
    distiller = build("dkd", dkd_alpha=2.0, dkd_beta=3.0, dkd_T=5.0)
    assert not distiller.needs.feats and distiller.term_weights(make_opt()) == {}
    out_s, out_t, targets = outputs()
    terms = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext())
    assert list(terms) == ["dkd"] and terms["dkd"].dim() == 0
    close(terms["dkd"], DKDloss()(out_s.logits, out_t.logits, targets, 2.0, 3.0, 5.0))
    temp = torch.full((4, 1), 7.0, requires_grad=True)
    learned = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext(temperature=temp))["dkd"]
    close(learned, DKDloss()(out_s.logits, out_t.logits, targets, 2.0, 3.0, 7.0))
    learned.backward()
    assert temp.grad.abs().sum() > 0 and out_s.logits.grad.abs().sum() > 0
    schedule = distiller.term_schedules(make_opt(warmup=20))["dkd"]
    assert [schedule(e, 0, 100) for e in (1, 10, 20, 240)] == [0.05, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0, 100, warmup=0) == 1.0


def test_ckd_adapter_returns_the_contrastive_term_on_logits():
    assert adapter_defaults("ckd") == {"ckd_T": 1.0}
    distiller = build("ckd", ckd_T=0.3)
    assert not distiller.needs.feats and not list(distiller.parameters())
    out_s, out_t, targets = outputs()
    terms = distiller.loss(out_s, out_t, Batch(images=None, targets=targets), StepContext())
    assert list(terms) == ["ckd"]
    close(terms["ckd"], CKDLoss(0.3)(out_s.logits, out_t.logits))


@pytest.mark.parametrize("name,bad", [("dkd", {"dkd_T": 0.0}), ("dkd", {"warmup": -1}), ("ckd", {"ckd_T": 0.0})])
def test_adapters_reject_unusable_flags(name, bad):
    with pytest.raises(UserError):
        build(name, **bad)
