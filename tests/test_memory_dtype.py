"""bfloat16 memory banks of CRD and CRCD (--memory_dtype): float32 arithmetic, only the stored rows rounded."""
from argparse import Namespace

import pytest
import torch

import crd.memory as memory_module
from crd.criterion import CRDLoss
from crd.memory import ContrastMemory
from crd.relation import RelationMemory
from distiller_zoo.CRCD import CRCDLoss
from helper.errors import UserError
from tests.test_crd import random_steps, step_outputs

BANKS = ("memory_v1", "memory_v2")
# Stated tolerance of bfloat16 banks against float32 banks started from the same draw, over 20 steps of the
# same inputs (measured: loss 3e-5 / 7e-5, gradient 2e-3 for CRD / CRCD at K=4096 / 500, D=128).
LOSS_RTOL, GRAD_RTOL = 1e-3, 1e-2


@pytest.mark.parametrize("memory_class", [ContrastMemory, RelationMemory])
@pytest.mark.parametrize("path", ["gather", "dense", "sparse"])
def test_bfloat16_bank_computes_what_a_float32_bank_of_the_rounded_rows_computes(memory_class, path, monkeypatch):
    monkeypatch.setattr(memory_module, "GATHER_BLOCK_ELEMENTS", 8 * 16 * 7)  # several blocks per product
    low = memory_class(16, 300, 50, score_path=path, memory_dtype="bfloat16")
    full = memory_class(16, 300, 50, score_path=path)
    for name in BANKS:
        assert getattr(low, name).dtype == torch.bfloat16
        getattr(full, name).copy_(getattr(low, name))
    inputs = random_steps(n_steps=1)[0]  # 8 samples, K=50, D=16, 300 rows; some negatives are updated rows
    got, want = step_outputs(low, *inputs), step_outputs(full, *inputs)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    for name in BANKS:  # the update is computed in float32, then rounded once
        assert not torch.equal(getattr(low, name).float(), getattr(full, name)), "the batch rows moved"
        assert torch.equal(getattr(low, name), getattr(full, name).bfloat16()), name
    assert torch.equal(low.params, full.params)


def loss_options(memory_dtype, **overrides):
    opt = dict(s_dim=24, t_dim=40, feat_dim=64, nce_k=512, nce_t=0.07, nce_m=0.5, n_data=2000,
               memory_dtype=memory_dtype)
    return Namespace(**{**opt, **overrides})


@pytest.mark.parametrize("loss_class, overrides", [(CRDLoss, {}), (CRCDLoss, {"nce_k": 128, "nce_t": 0.05})])
def test_bfloat16_banks_stay_within_the_stated_tolerance_over_steps(loss_class, overrides):
    gen = torch.Generator().manual_seed(2)
    opt = loss_options("float32", **overrides)
    steps = []
    for _ in range(20):
        y = torch.randint(opt.n_data, (16,), generator=gen)
        idx = torch.randint(opt.n_data, (16, opt.nce_k + 1), generator=gen)
        idx[:, 0] = y
        steps.append((torch.randn(16, opt.s_dim, generator=gen), torch.randn(16, opt.t_dim, generator=gen), y, idx))
    runs = {}
    for memory_dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)  # same embeddings and the same draw of the banks
        loss_fn = loss_class(loss_options(memory_dtype, **overrides))
        runs[memory_dtype] = []
        for f_s, f_t, y, idx in steps:
            f_s = f_s.clone().requires_grad_()
            loss = loss_fn(f_s, f_t, y, idx)
            loss.backward()
            runs[memory_dtype].append((loss.detach(), f_s.grad))
    for (loss32, grad32), (loss16, grad16) in zip(runs["float32"], runs["bfloat16"]):
        assert loss16.dtype == torch.float32
        assert abs(loss16 - loss32) <= LOSS_RTOL * abs(loss32)
        assert (grad16 - grad32).norm() <= GRAD_RTOL * grad32.norm()
    assert runs["float32"][-1][0] != runs["bfloat16"][-1][0], "the banks' rounding is visible"


@pytest.mark.parametrize("loss_class", [CRDLoss, CRCDLoss])
def test_bfloat16_banks_take_half_the_memory_and_round_trip_through_a_state_dict(loss_class):
    opt = loss_options("bfloat16")
    trained, resumed = loss_class(opt), loss_class(opt)
    full = loss_class(loss_options("float32"))
    for name in BANKS:
        bank = getattr(trained.contrast, name)
        assert bank.dtype == torch.bfloat16 and bank.nbytes * 2 == getattr(full.contrast, name).nbytes
    assert trained.contrast.params.dtype == torch.float32
    trained(torch.randn(4, opt.s_dim), torch.randn(4, opt.t_dim), torch.arange(4))
    resumed.load_state_dict(trained.state_dict())
    for key, value in trained.state_dict().items():
        assert value.dtype == resumed.state_dict()[key].dtype and torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("loss_class", [CRDLoss, CRCDLoss])
def test_under_bfloat16_autocast_the_scores_stay_float32(loss_class):
    loss_fn = loss_class(loss_options("bfloat16"))
    f_s, f_t = torch.randn(4, 24), torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_s, out_t = loss_fn.contrast(loss_fn.embed_s(f_s), loss_fn.embed_t(f_t), torch.arange(4))
        loss = loss_fn.criterion_s(out_s) + loss_fn.criterion_t(out_t)
    assert out_s.dtype == out_t.dtype == loss.dtype == torch.float32
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss_class", [CRDLoss, CRCDLoss])
def test_unknown_memory_dtype_is_a_user_error_naming_the_flag(loss_class):
    with pytest.raises(UserError, match="--memory_dtype 'float16'"):
        loss_class(loss_options("float16"))
