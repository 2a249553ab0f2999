"""CRD (Tian, Krishnan, Isola, ICLR 2020): golden values, exact fast score paths, no host sync, resumable memory."""
import json
import math
import os
from argparse import Namespace

import pytest
import torch

import crd.memory as memory_module
from crd.criterion import CRDLoss
from crd.memory import ContrastMemory, choose_score_path, sample_contrast_indices
from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, get_distiller_class, StepContext
from distiller_zoo.CRD import CRDDistiller
from helper.errors import UserError

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "crd_golden.json")
STATE_KEYS = {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias",
              "contrast.params", "contrast.memory_v1", "contrast.memory_v2"}


def make_opt(**overrides):
    opt = dict(s_dim=10, t_dim=12, feat_dim=8, nce_k=6, nce_t=0.07, nce_m=0.5, n_data=20)
    opt.update(overrides)
    return Namespace(**opt)


def as64(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN) as f:
        return json.load(f)


def golden_loss(golden, path):
    """CRDLoss in float64 holding the fixture's initial weights and memories, scoring with `path`."""
    cfg, init = golden["config"], golden["initial"]
    loss = CRDLoss(make_opt(**{k: cfg[k] for k in ("s_dim", "t_dim", "feat_dim", "nce_k", "nce_t", "nce_m",
                                                   "n_data")})).double()
    loss.load_state_dict({
        "embed_s.linear.weight": as64(init["W_s"]), "embed_s.linear.bias": as64(init["b_s"]),
        "embed_t.linear.weight": as64(init["W_t"]), "embed_t.linear.bias": as64(init["b_t"]),
        "contrast.memory_v1": as64(init["memory_v1"]), "contrast.memory_v2": as64(init["memory_v2"]),
        "contrast.params": as64([cfg["nce_k"], cfg["nce_t"], -1, -1, cfg["nce_m"]])})
    loss.contrast.score_path = path
    return loss


@pytest.mark.parametrize("path, block_elements", [("gather", None), ("dense", None), ("sparse", None),
                                                  ("sparse", 8), ("auto", None)])
def test_two_steps_match_float64_reference(golden, monkeypatch, path, block_elements):
    if block_elements is not None:  # one column per block: exercises the blockwise copy
        monkeypatch.setattr(memory_module, "GATHER_BLOCK_ELEMENTS", block_elements)
    loss_fn = golden_loss(golden, path)
    embeds = {"W_s": loss_fn.embed_s.linear.weight, "b_s": loss_fn.embed_s.linear.bias,
              "W_t": loss_fn.embed_t.linear.weight, "b_t": loss_fn.embed_t.linear.bias}
    for step in golden["steps"]:
        expected = step["expected"]
        f_s, f_t = as64(step["f_s"]).requires_grad_(), as64(step["f_t"]).requires_grad_()
        loss_fn.zero_grad()
        loss = loss_fn(f_s, f_t, torch.tensor(step["y"]), torch.tensor(step["idx"]))
        loss.backward()
        assert loss.shape == ()
        assert loss.item() == pytest.approx(expected["loss"], rel=1e-12)
        params = loss_fn.contrast.params
        assert params[2].item() == pytest.approx(expected["Z_v1"], rel=1e-12)
        assert params[3].item() == pytest.approx(expected["Z_v2"], rel=1e-12)
        for name, tensor in [("f_s", f_s), ("f_t", f_t)]:
            torch.testing.assert_close(tensor.grad, as64(expected[f"grad_{name}"]), rtol=1e-10, atol=1e-12)
        for name, param in embeds.items():
            torch.testing.assert_close(param.grad, as64(expected[f"grad_{name}"]), rtol=1e-10, atol=1e-12)
        for name in ("memory_v1", "memory_v2"):
            torch.testing.assert_close(getattr(loss_fn.contrast, name), as64(expected[name]), rtol=1e-12, atol=1e-14)


def run_memory(path, seed_memory, steps):
    """Outputs, anchor grads and final memories of ContrastMemory(`path`) over `steps` of (v1, v2, y, idx)."""
    torch.manual_seed(seed_memory)
    memory = ContrastMemory(16, 300, 50, score_path=path)
    return [step_outputs(memory, *step) for step in steps], memory.memory_v1, memory.memory_v2


def step_outputs(memory, v1, v2, y, idx):
    """Outputs and anchor grads of one forward/backward of `memory` under a fixed linear functional of its outputs."""
    v1, v2 = v1.clone().requires_grad_(), v2.clone().requires_grad_()
    out_v1, out_v2 = memory(v1, v2, y, idx)
    weights = torch.linspace(-1, 1, out_v1.numel()).view_as(out_v1)
    ((out_v1 * weights).sum() + (out_v2 * weights.flip(1)).sum()).backward()
    return out_v1.detach(), out_v2.detach(), v1.grad, v2.grad


def random_steps(n_steps=2, batch=8, K=50, dim=16, n_rows=300):
    gen = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(n_steps):
        v1 = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1)
        v2 = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen), dim=1)
        y = torch.randperm(n_rows, generator=gen)[:batch]
        idx = torch.randint(n_rows, (batch, K + 1), generator=gen)
        idx[:, 0] = y
        idx[:, 1:4] = y.roll(1).unsqueeze(1)  # negatives that are rows updated by this batch
        steps.append((v1, v2, y, idx))
    return steps


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_fast_paths_equal_direct_gather_in_float32(path, monkeypatch):
    monkeypatch.setattr(memory_module, "GATHER_BLOCK_ELEMENTS", 8 * 16 * 7)  # 7 columns per block
    steps = random_steps()
    expected, exp_m1, exp_m2 = run_memory("gather", 0, steps)
    actual, m1, m2 = run_memory(path, 0, steps)
    for want, got in zip(expected, actual):
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(m1, exp_m1, rtol=0, atol=1e-6)
    torch.testing.assert_close(m2, exp_m2, rtol=0, atol=1e-6)


def test_backward_after_the_bank_changed_again_is_refused():
    memory = ContrastMemory(16, 300, 50, score_path="dense")
    v1, v2, y, idx = random_steps(n_steps=1)[0]
    v1.requires_grad_()
    first, _ = memory(v1, v2, y, idx)
    memory(v1, v2, y, idx)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.sum().backward()


def test_sampled_indices_put_the_positive_first_and_cover_the_bank():
    y = torch.tensor([4, 0, 19])
    idx = sample_contrast_indices(y, 20, 400)
    assert idx.shape == (3, 401) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], y)
    assert idx.min() >= 0 and idx.max() < 20
    assert idx[:, 1:].unique().numel() == 20


def test_forward_without_idx_samples_like_sample_contrast_indices():
    v1, v2, y, _ = random_steps(n_steps=1)[0]
    torch.manual_seed(3)
    sampled = ContrastMemory(16, 300, 50)
    given = ContrastMemory(16, 300, 50)
    given.load_state_dict(sampled.state_dict())
    torch.manual_seed(11)
    out_sampled = sampled(v1, v2, y)
    torch.manual_seed(11)
    out_given = given(v1, v2, y, sample_contrast_indices(y, 300, 50))
    assert out_sampled[0].shape == (8, 51, 1)
    for a, b in zip(out_sampled, out_given):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", ["gather", "dense", "sparse"])
def test_forward_and_backward_never_sync_with_the_host(monkeypatch, path):
    loss_fn = CRDLoss(make_opt(n_data=300, nce_k=50))
    loss_fn.contrast.score_path = path

    def refuse(*args, **kwargs):
        raise AssertionError("host sync")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    y = torch.arange(0, 40, 10)
    for contrast_idx in (None, sample_contrast_indices(y, 300, 50)):
        loss = loss_fn(torch.randn(4, 10, requires_grad=True), torch.randn(4, 12), y, contrast_idx)
        loss.backward()
    monkeypatch.undo()
    assert math.isfinite(loss.item())


def test_state_dict_round_trip_keeps_the_memory_and_z():
    torch.manual_seed(0)
    trained = CRDLoss(make_opt(n_data=300, nce_k=50))
    torch.manual_seed(1)
    resumed = CRDLoss(make_opt(n_data=300, nce_k=50))
    assert set(trained.state_dict()) == STATE_KEYS
    y = torch.arange(4)
    trained(torch.randn(4, 10), torch.randn(4, 12), y)
    resumed.load_state_dict(trained.state_dict())
    assert resumed.contrast.params[2] > 0
    f_s, f_t, y2 = torch.randn(4, 10), torch.randn(4, 12), torch.tensor([0, 5, 9, 2])
    idx = sample_contrast_indices(y2, 300, 50)
    assert torch.equal(trained(f_s, f_t, y2, idx), resumed(f_s, f_t, y2, idx))
    for key, value in trained.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_memory_starts_uniform_with_unset_normalisers():
    memory = ContrastMemory(12, 500, 7, T=0.1, momentum=0.3)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (memory.memory_v1, memory.memory_v2):
        assert bank.shape == (500, 12) and bank.abs().max() <= stdv
        assert bank.abs().mean().item() == pytest.approx(stdv / 2, rel=0.05)
    assert not torch.equal(memory.memory_v1, memory.memory_v2)
    torch.testing.assert_close(memory.params, torch.tensor([7, 0.1, -1, -1, 0.3]))


def test_auto_path_prefers_the_gemm_unless_the_bank_dwarfs_the_samples():
    assert choose_score_path(50000, 4097, 128) == "dense"
    assert choose_score_path(50000, 16385, 128) == "dense"
    assert choose_score_path(1281167, 16385, 128) == "sparse"
    assert choose_score_path(1281167, 4097, 128) == "sparse"


@pytest.mark.parametrize("override, flag", [({"nce_k": 0}, "--nce_k"), ({"nce_t": 0.0}, "--nce_t"),
                                            ({"nce_m": 1.5}, "--nce_m"), ({"feat_dim": 0}, "--feat_dim")])
def test_bad_flags_fail_at_construction(override, flag):
    with pytest.raises(UserError, match=flag):
        CRDLoss(make_opt(**override))


def test_distiller_adapter_gives_a_finite_term_with_grads_to_the_student():
    assert get_distiller_class("crd") is CRDDistiller
    needs = CRDDistiller.needs
    assert needs.feats and needs.index and needs.contrast_index
    opt = Namespace(feat_dim=8, nce_k=6, nce_t=0.07, nce_m=0.5, mode="exact", kd_T=4)
    probe = ProbeShapes(feat_s=[torch.zeros(2, 3, 4, 4), torch.zeros(2, 10)],
                        feat_t=[torch.zeros(2, 5, 4, 4), torch.zeros(2, 12)],
                        logit_s=torch.zeros(2, 3), logit_t=torch.zeros(2, 3), n_data=20, num_classes=3)
    student_head = torch.nn.Linear(6, 10)
    distiller = CRDDistiller(opt, probe, student_head, torch.nn.Identity())
    assert distiller.criterion.embed_s.linear.in_features == 10
    assert distiller.criterion.embed_t.linear.in_features == 12
    assert distiller.criterion.contrast.memory_v1.shape == (20, 8)
    f_s = student_head(torch.randn(4, 6))
    f_s.retain_grad()
    out_s = ModelOutput(logits=torch.zeros(4, 3), feats=[torch.zeros(4, 3, 4, 4), f_s])
    out_t = ModelOutput(logits=torch.zeros(4, 3), feats=[torch.zeros(4, 5, 4, 4), torch.randn(4, 12)])
    y = torch.tensor([1, 5, 9, 13])
    batch = Batch(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), y, sample_contrast_indices(y, 20, 6))
    terms = distiller.loss(out_s, out_t, batch, StepContext())
    assert set(terms) == {"crd"} and torch.isfinite(terms["crd"])
    terms["crd"].backward()
    for grad in (f_s.grad, student_head.weight.grad, distiller.criterion.embed_s.linear.weight.grad,
                 distiller.criterion.embed_t.linear.weight.grad):
        assert grad is not None and grad.abs().sum() > 0
    assert len(distiller.param_groups(opt)[0]["params"]) == 4
