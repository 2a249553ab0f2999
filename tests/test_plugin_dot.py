"""DOT (Zhao et al., ICCV 2023), --dot: golden optimizer steps, signature, SGD case, param groups, resume."""
import pytest
import torch

from helper.plugins.dot import DistillationOrientedTrainer
from tests.golden_json import assert_close
from tests.golden_ls_simkd_dot import CASES, E, cases_of, decode, params_of


# ---- signature ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, expected", [
    (DistillationOrientedTrainer.__init__, [("params", E, False), ("lr", E, False), ("momentum", 0, False),
                                            ("momentum_kd", 0, False), ("dampening", 0, False),
                                            ("weight_decay", 0, False), ("faithful", False, True)]),
], ids=lambda x: getattr(x, "__qualname__", ""))
def test_signature_matches_the_official_code(fn, expected):
    assert params_of(fn) == expected


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
