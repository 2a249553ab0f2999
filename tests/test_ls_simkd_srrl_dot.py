"""Logit standardisation, SimKD, SRRL and the DOT optimizer: golden values, gradients, buffers and optimizer state
against float64 restatements of the official code, official signatures and state_dict keys, and the adapters."""
import argparse
import inspect
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import ModelOutput, ProbeShapes, StepContext, get_distiller_class
from distiller_zoo.DKD import DKDloss, dkd_loss
from distiller_zoo.KD import DistillKL, DistillKL_logit_stand, normalize
from helper.plugins.dot import DistillationOrientedTrainer
from helper.errors import UserError
from models import build_model
from models.util import SRRL, SimKD
from tests.golden_json import assert_close

with open(os.path.join(os.path.dirname(__file__), "fixtures", "ls_simkd_dot_golden.json")) as _f:
    CASES = json.load(_f)


def decode(x):
    """JSON tensors to float64 tensors, recursively through dicts and lists; other values unchanged."""
    if isinstance(x, dict) and set(x) == {"shape", "data"}:
        return torch.tensor(x["data"], dtype=torch.float64).reshape(x["shape"])
    if isinstance(x, dict):
        return {k: decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode(v) for v in x]
    return x


def leaf(t):
    return t.clone().requires_grad_(True) if torch.is_tensor(t) else t


def cases_of(kind):
    return sorted(name for name, case in CASES.items() if case["kind"] == kind)


# ---- logit standardisation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", cases_of("normalize"))
def test_normalize_matches_the_z_score_over_the_last_dimension(name):
    case = decode(CASES[name])
    logit = leaf(case["inputs"]["logit"])
    out = normalize(logit)
    assert_close(out, case["value"])
    (case["inputs"]["w"] * out).sum().backward()
    assert_close(logit.grad, case["grads"]["logit"])


@pytest.mark.parametrize("name", cases_of("DistillKL_logit_stand"))
def test_kd_on_standardised_logits_matches_the_reference_with_the_temperatures_gradient(name):
    case = decode(CASES[name])
    inputs = {k: leaf(v) for k, v in case["inputs"].items()}
    value = DistillKL_logit_stand()(inputs["y_s"], inputs["y_t"], inputs["temp"])
    assert_close(value.reshape(()), case["value"])
    value.sum().backward()
    for k, expected in case["grads"].items():
        assert_close(inputs[k].grad, expected)


@pytest.mark.parametrize("name", cases_of("dkd_loss"))
def test_dkd_loss_matches_the_reference_with_and_without_standardisation(name):
    case = decode(CASES[name])
    inputs = {k: leaf(v) for k, v in case["inputs"].items()}
    inputs["target"] = inputs["target"].detach().long()
    value = dkd_loss(**inputs)
    assert_close(value, case["value"])
    value.backward()
    for k, expected in case["grads"].items():
        assert_close(inputs[k].grad, expected)


@pytest.mark.parametrize("temperature", [4.0, torch.tensor([3.0], dtype=torch.float64),
                                         torch.tensor([[1.0], [2.0], [3.0], [5.0], [8.0]], dtype=torch.float64)],
                         ids=["float", "tensor1", "per_sample"])
def test_dkd_loss_without_standardisation_is_dkdloss(temperature):
    y_s, y_t = torch.randn(5, 9, dtype=torch.float64) * 3, torch.randn(5, 9, dtype=torch.float64) * 3
    target = torch.tensor([0, 4, 8, 4, 2])
    assert_close(dkd_loss(y_s, y_t, target, 1.0, 8.0, temperature),
                 DKDloss()(y_s, y_t, target, 1.0, 8.0, temperature))
    assert_close(dkd_loss(y_s, y_t, target, 1.0, 8.0, temperature, logit_stand=True),
                 DKDloss()(normalize(y_s), normalize(y_t), target, 1.0, 8.0, temperature))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_a_learnable_temperature_gets_finite_gradients_when_the_teacher_underflows(logit_stand):
    y_s, temp = torch.randn(2, 3, requires_grad=True), torch.ones(2, 1, requires_grad=True)
    y_t = torch.tensor([[0.0, 300.0, 0.0], [300.0, 0.0, 0.0]])
    for loss in (dkd_loss(y_s, y_t, torch.tensor([0, 1]), 1.0, 8.0, temp, logit_stand=logit_stand),
                 DistillKL_logit_stand()(y_s, y_t * 1e4, temp)):
        temp.grad = y_s.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(temp.grad).all() and torch.isfinite(y_s.grad).all()


def test_standardised_losses_compute_in_float32_under_bf16_autocast():
    y_s, y_t, target = torch.randn(6, 10), torch.randn(6, 10) * 4, torch.randint(0, 10, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kd = DistillKL_logit_stand()(y_s.bfloat16(), y_t.bfloat16(), torch.tensor([2.0]))
        dkd = dkd_loss(y_s.bfloat16(), y_t.bfloat16(), target, 1.0, 8.0, 2.0, logit_stand=True)
    assert kd.dtype == dkd.dtype == torch.float32
    s, t = y_s.bfloat16().float(), y_t.bfloat16().float()
    torch.testing.assert_close(kd, DistillKL(2.0)(normalize(s), normalize(t), torch.tensor([2.0])))
    torch.testing.assert_close(dkd, DKDloss()(normalize(s), normalize(t), target, 1.0, 8.0, 2.0))
    assert normalize(y_s.bfloat16()).dtype == torch.bfloat16


def test_standardisation_makes_kd_blind_to_logit_shift_and_scale():
    y_s, y_t = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    scale, shift = torch.rand(4, 1, dtype=torch.float64) * 5 + 0.5, torch.randn(4, 1, dtype=torch.float64)
    torch.testing.assert_close(DistillKL_logit_stand()(y_s * scale + shift, y_t * 3 - 2, 2.0),
                               DistillKL_logit_stand()(y_s, y_t, 2.0))


# ---- signatures ---------------------------------------------------------------------------------------------------

def params_of(fn):
    return [(p.name, p.default, p.kind == p.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


E = inspect.Parameter.empty


@pytest.mark.parametrize("fn, expected", [
    (normalize, [("logit", E, False)]),
    (DistillKL_logit_stand.forward, [("y_s", E, False), ("y_t", E, False), ("temp", E, False)]),
    (dkd_loss, [("logits_student", E, False), ("logits_teacher", E, False), ("target", E, False), ("alpha", E, False),
                ("beta", E, False), ("temperature", E, False), ("logit_stand", False, False)]),
    (SimKD.__init__, [("s_n", E, True), ("t_n", E, True), ("factor", 2, True)]),
    (SimKD.forward, [("feat_s", E, False), ("feat_t", E, False), ("cls_t", E, False)]),
    (SRRL.__init__, [("s_n", E, True), ("t_n", E, True)]),
    (SRRL.forward, [("feat_s", E, False), ("cls_t", E, False)]),
    (DistillationOrientedTrainer.__init__, [("params", E, False), ("lr", E, False), ("momentum", 0, False),
                                            ("momentum_kd", 0, False), ("dampening", 0, False),
                                            ("weight_decay", 0, False), ("faithful", False, True)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_the_official_code(fn, expected):
    assert params_of(fn) == expected


# ---- SimKD and SRRL modules ---------------------------------------------------------------------------------------

def module_from(case):
    """The module and a float64 classifier loaded with the case's parameters and running statistics."""
    params = case["params"]
    module = (SimKD if case["kind"] == "SimKD" else SRRL)(**case["init"]).double()
    module.load_state_dict({k: v for k, v in params.items() if not k.startswith("cls_t.")}, strict=False)
    cls_t = nn.Linear(*params["cls_t.weight"].shape[::-1]).double()
    cls_t.load_state_dict({"weight": params["cls_t.weight"], "bias": params["cls_t.bias"]})
    module.train(case["mode"] == "train")
    return module, cls_t


@pytest.mark.parametrize("name", cases_of("SimKD") + cases_of("SRRL"))
def test_projector_outputs_gradients_and_running_stats_match_the_reference(name):
    case = decode(CASES[name])
    module, cls_t = module_from(case)
    inputs = {k: leaf(v) for k, v in case["inputs"].items()}
    if case["kind"] == "SimKD":
        outputs = module(inputs["feat_s"], inputs["feat_t"], cls_t)
        value = F.mse_loss(outputs[0], outputs[1]) + (case["w_pred"] * outputs[2]).sum()
    else:
        outputs = module(inputs["feat_s"], cls_t)
        value = F.mse_loss(outputs[0], inputs["feat_t"]) + F.mse_loss(outputs[1], inputs["logit_t"])
    assert_close(list(outputs), case["outputs"])
    assert_close(value, case["value"])
    value.backward()
    for k, expected in case["grads"].items():
        assert_close(inputs[k].grad, expected)
    named = {**dict(module.named_parameters()), **{"cls_t." + k: p for k, p in cls_t.named_parameters()}}
    assert sorted(named) == sorted(case["param_grads"])
    for k, expected in case["param_grads"].items():
        assert_close(named[k].grad, expected)
    buffers = dict(module.named_buffers())
    for k, expected in case["running_stats"].items():
        assert_close(buffers[k], expected)


def bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_simkd_keys(s_n, t_n, factor=2):
    """SimKD's models/util.py: transfer = conv1x1(s_n, t_n//f), BN, ReLU, conv3x3(t_n//f, t_n//f), BN, ReLU,
    conv1x1(t_n//f, t_n), BN, ReLU, all convs bias-free; avg_pool has no state."""
    mid = t_n // factor
    return {"transfer.0.weight": (mid, s_n, 1, 1), **bn_keys("transfer.1", mid), "transfer.3.weight": (mid, mid, 3, 3),
            **bn_keys("transfer.4", mid), "transfer.6.weight": (t_n, mid, 1, 1), **bn_keys("transfer.7", t_n)}


def official_srrl_keys(s_n, t_n):
    """SimKD's / CTKD's models/util.py: transfer = conv1x1(s_n, t_n) without bias, BN, ReLU."""
    return {"transfer.0.weight": (t_n, s_n, 1, 1), **bn_keys("transfer.1", t_n)}


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- adapters on real networks ------------------------------------------------------------------------------------

def networks(teacher_name, student_name, seed=0):
    torch.manual_seed(seed)
    teacher, student = build_model(teacher_name, 100).eval(), build_model(student_name, 100).eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feat_t, logit_t = teacher(x, is_feat=True)
        feat_s, logit_s = student(x, is_feat=True)
    probe = ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=100, num_classes=100)
    return teacher, student, probe


def build(name, teacher, student, probe, *argv):
    cls = get_distiller_class(name)
    parser = argparse.ArgumentParser()
    cls.add_args(parser)
    return cls(parser.parse_args(list(argv)), probe, student, teacher)


def teacher_classifier(teacher):
    """The official cls_t, get_feat_modules()[-1] in SimKD's nets: the final Linear under its RepDistiller name."""
    return teacher.fc if hasattr(teacher, "fc") else teacher.linear


PAIRS = [("resnet32x4", "resnet8x4", 256, 256, 256, 256), ("wrn_40_2", "ShuffleV1", 960, 128, 960, 128)]


@pytest.mark.parametrize("teacher_name, student_name, s_map, t_map, s_pool, t_pool", PAIRS,
                         ids=["resnet32x4-resnet8x4", "wrn_40_2-ShuffleV1"])
def test_state_dict_keys_fit_the_official_modules(teacher_name, student_name, s_map, t_map, s_pool, t_pool):
    teacher, student, probe = networks(teacher_name, student_name)
    simkd = build("simkd", teacher, student, probe)
    assert shapes(simkd.proj) == official_simkd_keys(s_map, t_map)
    assert shapes(simkd.cls_t) == {"weight": (100, t_map), "bias": (100,)}
    srrl = build("srrl", teacher, student, probe)
    assert shapes(srrl.srrl) == official_srrl_keys(s_pool, t_pool)
    assert shapes(build("simkd", teacher, student, probe, "--simkd_factor", "4").proj) == \
        official_simkd_keys(s_map, t_map, 4)


@pytest.mark.parametrize("teacher_name, student_name", [("resnet32x4", "resnet8x4"), ("wrn_40_2", "ShuffleV1"),
                                                        ("ShuffleV1", "resnet8x4")])
def test_simkd_eval_model_is_the_official_validation_and_needs_only_student_and_distiller(teacher_name, student_name):
    teacher, student, probe = networks(teacher_name, student_name)
    distiller = build("simkd", teacher, student, probe)
    for bn in distiller.proj.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    distiller.eval()
    evaluator = distiller.eval_model(student).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = evaluator(x)
        feat_s, _ = student(x, is_feat=True)
        feat_t, _ = teacher(x, is_feat=True)
        expected = distiller.proj(feat_s[-2], feat_t[-2], teacher_classifier(teacher))[2]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    owned = {id(p) for p in list(student.parameters()) + list(distiller.parameters())}
    assert {id(p) for p in evaluator.parameters()} <= owned
    other_teacher, _, other_probe = networks(teacher_name, student_name, seed=1)
    restored = build("simkd", other_teacher, student, other_probe)
    assert not torch.equal(restored.cls_t.weight, distiller.cls_t.weight)
    restored.load_state_dict(distiller.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored.eval().eval_model(student).eval()(x), got)


def test_simkd_adapter_returns_the_official_mse_and_keeps_the_teachers_classifier_frozen():
    teacher, student, probe = networks("wrn_40_2", "ShuffleV1")
    distiller = build("simkd", teacher, student, probe)
    assert get_distiller_class("simkd").needs.feats and distiller.t_size == 8
    assert sorted(k.split(".")[0] for k in distiller.state_dict()) == ["cls_t"] * 2 + ["proj"] * 18
    assert not any(p.requires_grad for p in distiller.cls_t.parameters())
    assert {id(p) for g in distiller.param_groups(None) for p in g["params"]} == \
        {id(p) for p in distiller.proj.parameters()}
    torch.testing.assert_close(distiller.cls_t.weight, teacher.fc.weight)
    with torch.no_grad():
        teacher.fc.weight.add_(1.0)
    assert not torch.equal(distiller.cls_t.weight, teacher.fc.weight)
    feat_s = [f.detach().clone().requires_grad_(True) for f in student(torch.randn(4, 3, 32, 32), is_feat=True)[0]]
    feat_t = [f.detach() for f in teacher(torch.randn(4, 3, 32, 32), is_feat=True)[0]]
    out_s, out_t = ModelOutput(torch.randn(4, 100), feat_s), ModelOutput(torch.randn(4, 100), feat_t)
    terms = distiller.loss(out_s, out_t, None, StepContext())
    trans_s, trans_t, _ = distiller.proj(feat_s[-2], feat_t[-2], distiller.cls_t)
    assert list(terms) == ["simkd"]
    torch.testing.assert_close(terms["simkd"], F.mse_loss(trans_s, trans_t))
    terms["simkd"].backward()
    assert feat_s[-2].grad.abs().sum() > 0 and all(p.grad is not None for p in distiller.proj.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert distiller.loss(out_s, out_t, None, StepContext())["simkd"].dtype == torch.float32


def test_srrl_adapter_returns_both_official_mses_and_trains_through_the_frozen_classifier():
    teacher, student, probe = networks("resnet32x4", "resnet8x4")
    distiller = build("srrl", teacher, student, probe)
    pooled_s = torch.randn(4, 256, requires_grad=True)
    out_s = ModelOutput(torch.randn(4, 100), [None] * 4 + [pooled_s])
    out_t = ModelOutput(torch.randn(4, 100), [None] * 4 + [torch.randn(4, 256)])
    terms = distiller.loss(out_s, out_t, None, StepContext())
    trans, pred = distiller.srrl(pooled_s, teacher.fc)
    assert sorted(terms) == ["srrl_feat", "srrl_sr"]
    torch.testing.assert_close(terms["srrl_feat"] + terms["srrl_sr"],
                               F.mse_loss(trans, out_t.pooled) + F.mse_loss(pred, out_t.logits))
    terms["srrl_sr"].backward()
    assert pooled_s.grad.abs().sum() > 0 and distiller.srrl.transfer[0].weight.grad.abs().sum() > 0
    assert distiller.cls_t.weight.grad is None and not distiller.cls_t.weight.requires_grad


def test_simkd_flags_and_start_up_errors():
    parser = argparse.ArgumentParser()
    get_distiller_class("simkd").add_args(parser)
    assert vars(parser.parse_args([])) == {"simkd_factor": 2}
    teacher, student, probe = networks("resnet32x4", "resnet8x4")
    with pytest.raises(UserError, match="--simkd_factor"):
        build("simkd", teacher, student, probe, "--simkd_factor", "0")
    with pytest.raises(UserError, match="classifier"):
        build("simkd", nn.Sequential(nn.Linear(256, 100), nn.Linear(100, 100)), student, probe)
    with pytest.raises(UserError, match="no nn.Linear"):
        build("srrl", nn.Identity(), student, probe)


# ---- DOT ----------------------------------------------------------------------------------------------------------

def drive(case, mode):
    """mdistiller's trainer loop with real backward passes; yields (params, optimizer) after each step."""
    params = {k: v.clone().requires_grad_(True) for k, v in case["init"].items()}
    opt = DistillationOrientedTrainer(list(params.values()), faithful=mode == "faithful", **case["hyper"])
    for step in case["steps"]:
        for kind, step_fn in (("kd", opt.step_kd), ("task", opt.step)):
            opt.zero_grad(set_to_none=case["set_to_none"])
            if step[kind]:
                sum((params[k] * g).sum() for k, g in step[kind].items()).backward()
            step_fn()
        yield params, opt


@pytest.mark.parametrize("mode", ["correct", "faithful"])
@pytest.mark.parametrize("name", cases_of("DOT"))
def test_dot_parameters_and_both_buffers_match_the_reference_after_every_step(name, mode):
    case = decode(CASES[name])
    expected_steps = case[mode]
    steps_done = 0
    for (params, opt), expected in zip(drive(case, mode), expected_steps):
        for k, p in params.items():
            assert_close(p.detach(), expected["params"][k])
            state = opt.state.get(p, {})
            for buffer in ("momentum_buffer", "momentum_kd_buffer"):
                if k in expected[buffer]:
                    assert_close(state[buffer], expected[buffer][k])
                else:
                    assert state.get(buffer) is None
        steps_done += 1
    assert steps_done == len(case["steps"])


def test_dot_modes_agree_when_no_kd_only_parameter_meets_weight_decay():
    case = decode(CASES["dot_trainer_usage"])
    case["hyper"] = dict(case["hyper"], weight_decay=0.0)
    for (p_c, _), (p_f, _) in zip(drive(case, "correct"), drive(case, "faithful")):
        for k in p_c:
            torch.testing.assert_close(p_c[k], p_f[k], rtol=0, atol=0)


def test_dot_with_equal_momenta_is_sgd_on_the_summed_gradient():
    torch.manual_seed(0)
    init = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    dot_params = [p.clone().requires_grad_(True) for p in init]
    sgd_params = [p.clone().requires_grad_(True) for p in init]
    dot = DistillationOrientedTrainer(dot_params, lr=0.05, momentum=0.9, momentum_kd=0.9, weight_decay=5e-4)
    sgd = torch.optim.SGD(sgd_params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        g_kd, g_task = [torch.randn_like(p) for p in init], [torch.randn_like(p) for p in init]
        dot.zero_grad()
        sum((p * g).sum() for p, g in zip(dot_params, g_kd)).backward(retain_graph=True)
        dot.step_kd()
        dot.zero_grad()
        sum((p * g).sum() for p, g in zip(dot_params, g_task)).backward()
        dot.step()
        sgd.zero_grad()
        sum((p * (a + b)).sum() for p, a, b in zip(sgd_params, g_kd, g_task)).backward()
        sgd.step()
    for a, b in zip(dot_params, sgd_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def gradient_sequence(init, steps):
    """Per step: KD gradients of every parameter, task gradient of the first only (the others are KD-only)."""
    gen = torch.Generator().manual_seed(1)
    return [([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in init],
             [torch.randn(init[0].shape, generator=gen, dtype=init[0].dtype)]) for _ in range(steps)]


def run(opt, params, grads):
    for g_kd, g_task in grads:
        opt.zero_grad()
        sum((p * g).sum() for p, g in zip(params, g_kd)).backward()
        opt.step_kd()
        opt.zero_grad()
        sum((p * g).sum() for p, g in zip(params, g_task)).backward()
        opt.step()
    return opt


HYPER = dict(lr=0.1, momentum=0.8, momentum_kd=0.95, weight_decay=0.01)


def test_dot_updates_each_parameter_group_with_its_own_learning_rate():
    init = [torch.randn(4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    grads = gradient_sequence(init, 3)
    one, two, moved = ([p.clone().requires_grad_(True) for p in init] for _ in range(3))
    run(DistillationOrientedTrainer(one, **HYPER), one, grads)
    run(DistillationOrientedTrainer([{"params": two[:1]}, {"params": two[1:], "lr": 0.1}], **HYPER), two, grads)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    run(DistillationOrientedTrainer([{"params": moved[:1]}, {"params": moved[1:], "lr": 0.5}], **HYPER), moved, grads)
    torch.testing.assert_close(moved[0], one[0], rtol=0, atol=0)
    assert not torch.allclose(moved[1], one[1])


def test_dot_state_dict_round_trip_resumes_exactly():
    init = [torch.randn(4, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)]
    grads = gradient_sequence(init, 4)
    straight, resumed = ([p.clone().requires_grad_(True) for p in init] for _ in range(2))
    run(DistillationOrientedTrainer(straight, **HYPER), straight, grads)
    first = run(DistillationOrientedTrainer(resumed, **HYPER), resumed, grads[:2])
    second = DistillationOrientedTrainer(resumed, **HYPER)
    second.load_state_dict(first.state_dict())
    run(second, resumed, grads[2:])
    for a, b in zip(straight, resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dot_rejects_negative_hyper_parameters():
    for bad in ({"lr": -1.0}, {"lr": 0.1, "momentum": -0.1}, {"lr": 0.1, "momentum_kd": -0.1},
                {"lr": 0.1, "weight_decay": -1.0}):
        with pytest.raises(ValueError):
            DistillationOrientedTrainer([torch.zeros(1, requires_grad=True)], **bad)
