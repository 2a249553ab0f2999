"""CTKD's temperature (Li et al., AAAI 2023), --have_mlp: golden values, signatures, flags, curriculum."""
import argparse
import inspect
import math

import pytest
import torch

from distiller_zoo.CKD import CKDLoss
from distiller_zoo.CTKD import (GradientReversal, GradientReversalFunction, Global_T, Instance_T, add_ctkd_args,
                                build_temperature, curriculum_lambda, map_temperature, stats)
from distiller_zoo.DKD import DKDloss
from distiller_zoo.KD import DistillKL
from helper.errors import UserError
from tests.golden_headline import CASES, cases_of, close, decode


# ---- golden values ------------------------------------------------------------------------------------------------

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
