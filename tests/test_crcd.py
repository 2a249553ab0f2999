"""CRCD (Zhu et al., CVPR 2021): golden values of the direct form, relation reformulation, gradient elements, adapter."""
import importlib.util
import inspect
import json
import os
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch.utils._python_dispatch import TorchDispatchMode

import crd.memory as memory_module
from crd.memory import ContrastMemory, sample_contrast_indices
from crd.relation import RelationMemory
from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, get_distiller_class, StepContext
from distiller_zoo.CRCD import (CRCDDistiller, CRCDLoss, classifier_head, student_gradient_element,
                                teacher_gradient_element)
from distiller_zoo.KD import DistillKL
from helper.errors import UserError
from models import model_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("make_crcd_fixtures", os.path.join(FIXTURES, "make_crcd_fixtures.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
LAYER_KEYS = {"linear": ["linear"], "nonlinear": ["linear.0", "linear.2", "linear.4"], "nofc": []}
OPT_KEYS = ("embed_type", "s_dim", "t_dim", "feat_dim", "nce_k", "nce_t", "nce_m", "n_data")


def as64(values):
    return torch.tensor(values, dtype=torch.float64)


def make_opt(**overrides):
    opt = dict(embed_type="linear", s_dim=10, t_dim=12, feat_dim=8, nce_k=6, nce_t=0.05, nce_m=0.5, n_data=20)
    opt.update(overrides)
    return Namespace(**opt)


@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(FIXTURES, "crcd_golden.json")) as f:
        return json.load(f)


def golden_loss(case, path):
    """CRCDLoss in float64 holding the fixture's initial weights and banks, scoring with `path`."""
    cfg, init = case["config"], case["initial"]
    loss = CRCDLoss(Namespace(**{k: cfg[k] for k in OPT_KEYS})).double()
    state = {"contrast.memory_v1": as64(init["memory_v1"]), "contrast.memory_v2": as64(init["memory_v2"]),
             "contrast.params": as64([cfg["nce_k"], cfg["nce_t"], -1, -1, cfg["nce_m"]])}
    for side in ("embed_s", "embed_t"):
        for key, (weight, bias) in zip(LAYER_KEYS[cfg["embed_type"]], init[side]):
            state[f"{side}.{key}.weight"], state[f"{side}.{key}.bias"] = as64(weight), as64(bias)
    loss.load_state_dict(state)
    loss.contrast.score_path = path
    return loss


def embed_params(loss):
    return list(loss.embed_s.parameters()) + list(loss.embed_t.parameters())


@pytest.mark.parametrize("embed_type", ["linear", "nonlinear", "nofc"])
@pytest.mark.parametrize("path, block_elements", [("gather", None), ("dense", None), ("sparse", 8)])
def test_two_steps_match_the_direct_float64_reference(golden, monkeypatch, embed_type, path, block_elements):
    if block_elements is not None:  # one row per block: exercises the blockwise copies
        monkeypatch.setattr(memory_module, "GATHER_BLOCK_ELEMENTS", block_elements)
    case = golden[embed_type]
    loss_fn = golden_loss(case, path)
    for step in case["steps"]:
        expected = step["expected"]
        f_s, f_t = as64(step["f_s"]).requires_grad_(), as64(step["f_t"]).requires_grad_()
        loss_fn.zero_grad()
        loss = loss_fn(f_s, f_t, torch.tensor(step["y"]), torch.tensor(step["idx"]))
        loss.backward()
        assert loss.shape == ()
        assert loss.item() == pytest.approx(expected["loss"], rel=1e-12)
        assert loss_fn.contrast.params[2].item() == pytest.approx(expected["Z_v1"], rel=1e-12)
        assert loss_fn.contrast.params[3].item() == pytest.approx(expected["Z_v2"], rel=1e-12)
        torch.testing.assert_close(f_s.grad, as64(expected["grad_f_s"]), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(f_t.grad, as64(expected["grad_f_t"]), rtol=1e-9, atol=1e-12)
        params = embed_params(loss_fn)
        assert len(params) == len(expected["grad_params"])
        for param, grad in zip(params, expected["grad_params"]):
            torch.testing.assert_close(param.grad, as64(grad), rtol=1e-9, atol=1e-12)
        for name in ("memory_v1", "memory_v2"):
            torch.testing.assert_close(getattr(loss_fn.contrast, name), as64(expected[name]), rtol=0, atol=1e-14)


def random_steps(batch=8, K=50, dim=16, n_rows=300, n_steps=2):
    """(v1, v2, y, idx) per step; negatives include other samples' anchors and the sample's own row."""
    gen = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(n_steps):
        v1 = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
        v2 = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
        y = torch.randperm(n_rows, generator=gen)[:batch]
        idx = torch.randint(n_rows, (batch, K + 1), generator=gen)
        idx[:, 0], idx[:, 1:4], idx[:, 4] = y, y.roll(1).unsqueeze(1), y
        steps.append((v1, v2, y, idx))
    return steps


def direct_steps(memory_v1, memory_v2, steps, temperature=0.05, momentum=0.5):
    """The CRCD code's [B, B, K+1, D] form in float64 from the same float32 inputs: outputs, v grads, banks."""
    m1, m2, z, results = memory_v1.double(), memory_v2.double(), None, []
    n_rows = m1.shape[0]
    for v1, v2, y, idx in steps:
        v1, v2 = v1.double().requires_grad_(), v2.double().requires_grad_()
        out_v1 = reference.direct_relation_exp(m2, v1, y, idx, temperature)
        out_v2 = reference.direct_relation_exp(m1, v2, y, idx, temperature)
        z = z or (float(out_v1.detach().mean()) * n_rows, float(out_v2.detach().mean()) * n_rows)
        out_v1, out_v2 = out_v1 / z[0], out_v2 / z[1]
        weighted_sum(out_v1, out_v2).backward()
        results.append((out_v1.detach(), out_v2.detach(), v1.grad, v2.grad))
        m1 = reference.momentum_update(m1, y, v1.detach(), momentum)
        m2 = reference.momentum_update(m2, y, v2.detach(), momentum)
    return results, m1, m2


def weighted_sum(out_v1, out_v2):
    """A fixed linear functional of both outputs [B*B, K+1, 1], to take gradients of every entry."""
    weights = torch.linspace(-1, 1, out_v1.numel(), dtype=out_v1.dtype).view_as(out_v1)
    return (out_v1 * weights).sum() + (out_v2 * weights.flip(1)).sum()


def sample_major(out, batch):
    """Our anchor-major rows a*B + b reordered to the CRCD code's b*B + a: [B*B, K+1, 1]."""
    return out.view(batch, batch, *out.shape[1:]).transpose(0, 1).reshape(out.shape)


@pytest.mark.parametrize("path", ["gather", "dense", "sparse"])
def test_relations_equal_the_direct_form_in_float32(monkeypatch, path):
    monkeypatch.setattr(memory_module, "GATHER_BLOCK_ELEMENTS", 3 * 51 * 16)  # three samples per block
    steps = random_steps()
    torch.manual_seed(0)
    memory = RelationMemory(16, 300, 50, score_path=path)
    expected, m1, m2 = direct_steps(memory.memory_v1, memory.memory_v2, steps)
    for (v1, v2, y, idx), want in zip(steps, expected):
        v1, v2 = v1.clone().requires_grad_(), v2.clone().requires_grad_()
        out_v1, out_v2 = memory(v1, v2, y, idx)
        assert out_v1.shape == (64, 51, 1)
        out_v1, out_v2 = sample_major(out_v1, 8), sample_major(out_v2, 8)
        weighted_sum(out_v1, out_v2).backward()
        for got, exp in zip((out_v1, out_v2, v1.grad, v2.grad), want):
            torch.testing.assert_close(got.double(), exp, rtol=1e-4, atol=1e-5 * exp.abs().max().item())
    torch.testing.assert_close(memory.memory_v1.double(), m1, rtol=0, atol=1e-6)
    torch.testing.assert_close(memory.memory_v2.double(), m2, rtol=0, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest element count and the most dimensions of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.numel, self.ndim, self.ops = 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel, self.ndim = max(self.numel, t.numel()), max(self.ndim, t.dim())
        self.ops += 1
        return out


def test_k16384_forward_and_backward_never_build_the_relation_tensor():
    batch, K, dim, n_rows = 64, 16384, 128, 50000
    torch.manual_seed(0)
    loss_fn = CRCDLoss(make_opt(s_dim=64, t_dim=256, feat_dim=dim, nce_k=K, n_data=n_rows))
    f_s = torch.randn(batch, 64, requires_grad=True)
    y = torch.randperm(n_rows)[:batch]
    forward, backward = LargestTensor(), LargestTensor()
    with forward:
        loss = loss_fn(f_s, torch.randn(batch, 256), y, sample_contrast_indices(y, n_rows, K))
    with backward:
        loss.backward()
    assert backward.ops > 0 and torch.isfinite(loss) and f_s.grad.abs().sum() > 0
    for mode in (forward, backward):
        assert mode.ndim <= 3
        assert mode.numel <= batch * batch * (K + 1)  # the CRCD code's relations: batch * batch * (K + 1) * dim


def test_signature_and_the_crcd_code_defaults():
    params = inspect.signature(CRCDLoss.forward).parameters
    assert list(params) == ["self", "f_s", "f_t", "idx", "contrast_idx"]
    assert params["contrast_idx"].default is None
    loss_fn = CRCDLoss(Namespace(s_dim=10, t_dim=12, n_data=600))
    contrast = loss_fn.contrast
    assert (contrast.K, contrast.T, contrast.momentum) == (500, 0.05, 0.5)
    assert contrast.memory_v1.shape == (600, 128) and loss_fn.embed_s.linear.out_features == 128
    loss = loss_fn(torch.randn(3, 10), torch.randn(3, 12), torch.tensor([0, 7, 9]))  # negatives sampled here
    assert torch.isfinite(loss) and contrast.params[2] > 0


def test_banks_are_crd_draws_scaled_to_unit_rows():
    torch.manual_seed(5)
    crd_banks = ContrastMemory(12, 40, 7)
    torch.manual_seed(5)
    crcd_banks = RelationMemory(12, 40, 7)
    for name in ("memory_v1", "memory_v2"):
        drawn, bank = getattr(crd_banks, name), getattr(crcd_banks, name)
        torch.testing.assert_close(bank, F.normalize(drawn, dim=1))
    torch.testing.assert_close(crcd_banks.params, torch.tensor([7, 0.05, -1, -1, 0.5]))


@pytest.mark.parametrize("embed_type, s_dim, t_dim", [("linear", 10, 12), ("nonlinear", 10, 12), ("nofc", 8, 8)])
def test_embedding_shapes_and_state_keys(embed_type, s_dim, t_dim):
    loss_fn = CRCDLoss(make_opt(embed_type=embed_type, s_dim=s_dim, t_dim=t_dim, feat_dim=5))
    dim = 8 if embed_type == "nofc" else 5
    assert loss_fn.contrast.memory_v1.shape == (20, dim)
    out = loss_fn.embed_s(torch.randn(3, s_dim))
    assert out.shape == (3, dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    keys = {k for k in loss_fn.state_dict() if k.startswith("embed_s.")}
    assert keys == {f"embed_s.{k}.{p}" for k in LAYER_KEYS[embed_type] for p in ("weight", "bias")}


@pytest.mark.parametrize("override, message", [({"embed_type": "mlp"}, "--embed_type"),
                                               ({"embed_type": "nofc"}, "nofc"), ({"nce_k": 0}, "--nce_k"),
                                               ({"nce_t": 0.0}, "--nce_t"), ({"nce_m": 2.0}, "--nce_m")])
def test_bad_options_fail_at_construction(override, message):
    with pytest.raises(UserError, match=message):
        CRCDLoss(make_opt(**override))


def test_forward_and_backward_never_sync_with_the_host(monkeypatch):
    loss_fn = CRCDLoss(make_opt(n_data=300, nce_k=50))

    def refuse(*args, **kwargs):
        raise AssertionError("host sync")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    y = torch.arange(0, 40, 10)
    for contrast_idx in (None, sample_contrast_indices(y, 300, 50)):
        loss_fn(torch.randn(4, 10, requires_grad=True), torch.randn(4, 12), y, contrast_idx).backward()
    monkeypatch.undo()
    assert loss_fn.contrast.params[2] > 0


# ---- gradient elements and the adapter ---------------------------------------------------------------------------

def small_models():
    torch.manual_seed(0)
    student, teacher = model_dict["resnet8"](num_classes=10), model_dict["resnet14"](num_classes=10)
    teacher.eval()
    return student, teacher


def test_gradient_elements_equal_autograd_through_the_full_models():
    student, teacher = small_models()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 3, 3, 9, 1, 5])
    feats_t, logits_t = teacher(x, is_feat=True)
    want_t = torch.autograd.grad(F.cross_entropy(logits_t, y), feats_t[-1])[0]
    with torch.no_grad():
        pooled_t = teacher(x, is_feat=True)[0][-1]
    got_t = teacher_gradient_element(classifier_head(teacher), pooled_t, y)
    assert classifier_head(teacher) is teacher.fc and got_t.grad_fn is None
    torch.testing.assert_close(got_t, want_t)

    feats_s, logits_s = student(x, is_feat=True)
    want_s = torch.autograd.grad(F.cross_entropy(logits_s, y), feats_s[-1], retain_graph=True)[0]
    got_s = student_gradient_element(classifier_head(student), feats_s[-1], y)
    torch.testing.assert_close(got_s, want_s)
    closed_form = (F.softmax(logits_s, dim=1) - F.one_hot(y, 10)) @ student.fc.weight / 6
    torch.testing.assert_close(got_s, closed_form)
    got_s.pow(2).sum().backward()  # the student trains through its gradient element
    assert student.fc.weight.grad.abs().sum() > 0 and student.conv1.weight.grad.abs().sum() > 0


def test_classifier_head_is_the_last_linear_or_a_user_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    assert classifier_head(model) is model[2]
    with pytest.raises(UserError, match="no nn.Linear"):
        classifier_head(torch.nn.Conv2d(3, 3, 1))


def adapter_opt(**overrides):
    opt = dict(feat_dim=16, nce_k=12, nce_t=0.05, nce_m=0.5, embed_type="linear", kd_T=4, alpha=0.9, beta=0.8,
               with_grad=False, grad_kd_type="cos", grad_kd_weight=2.0, grad_combine="sum")
    opt.update(overrides)
    return Namespace(**opt)


def probe_of(student, teacher, n_data=40):
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        feat_s, logit_s = student.eval()(x, is_feat=True)
        feat_t, logit_t = teacher(x, is_feat=True)
    student.train()
    return ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=n_data, num_classes=10)


def adapter_batch(student, teacher, K=12, n_data=40):
    gen = torch.Generator().manual_seed(3)
    x, targets = torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([1, 4, 4, 7])
    y = torch.tensor([2, 11, 23, 37])
    feats_s, logits_s = student(x, is_feat=True)
    with torch.no_grad():
        feats_t, logits_t = teacher(x, is_feat=True)
    batch = Batch(x, targets, y, sample_contrast_indices(y, n_data, K))
    return ModelOutput(logits_s, feats_s), ModelOutput(logits_t, feats_t), batch


def test_adapter_without_gradients_gives_one_term():
    student, teacher = small_models()
    assert get_distiller_class("crcd") is CRCDDistiller
    needs = CRCDDistiller.needs
    assert needs.feats and needs.index and needs.contrast_index
    distiller = CRCDDistiller(adapter_opt(), probe_of(student, teacher), student, teacher)
    terms = distiller.loss(*adapter_batch(student, teacher), StepContext())
    assert set(terms) == {"crcd"} and torch.isfinite(terms["crcd"])
    assert distiller.term_weights(adapter_opt()) == {}
    assert distiller.criterion.contrast.memory_v1.shape == (40, 16)


@pytest.mark.parametrize("grad_kd_type", ["cos", "crd", "crcd"])
def test_gradient_term_trains_the_student_and_leaves_the_teacher_alone(grad_kd_type):
    student, teacher = small_models()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = adapter_opt(with_grad=True, grad_kd_type=grad_kd_type)
    distiller = CRCDDistiller(opt, probe_of(student, teacher), student, teacher)
    assert distiller.term_weights(opt) == {"crcd_grad": 2.0 * 0.8}
    assert not any(k.startswith("teacher") for k in distiller.state_dict())
    assert all(p.requires_grad for group in distiller.param_groups(opt) for p in group["params"])
    terms = distiller.loss(*adapter_batch(student, teacher), StepContext())
    assert set(terms) == {"crcd", "crcd_grad"} and torch.isfinite(terms["crcd_grad"])
    terms["crcd_grad"].backward()
    assert student.fc.weight.grad.abs().sum() > 0 and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_product_combination_is_the_kl_times_the_gradient_loss():
    student, teacher = small_models()
    probe = probe_of(student, teacher)
    summed = CRCDDistiller(adapter_opt(with_grad=True), probe, student, teacher)
    product_opt = adapter_opt(with_grad=True, grad_combine="product")
    product = CRCDDistiller(product_opt, probe, student, teacher)
    assert product.term_weights(product_opt) == {"crcd_grad": 0.9 * 2.0}
    out_s, out_t, batch = adapter_batch(student, teacher)
    kl = DistillKL(4)(out_s.logits, out_t.logits)
    grad_loss = summed.gradient_loss(out_s, out_t, batch, batch.contrast_idx)
    assert 0 < grad_loss.item() <= 20
    torch.testing.assert_close(product.gradient_loss(out_s, out_t, batch, batch.contrast_idx), kl * grad_loss)


def test_gradient_options_that_cannot_work_fail_at_construction():
    student, teacher = small_models()  # pooled sizes 64 and 64
    wide_teacher = model_dict["resnet8x4"](num_classes=10).eval()  # pooled size 256
    with pytest.raises(UserError, match="--grad_kd_type cos"):
        CRCDDistiller(adapter_opt(with_grad=True), probe_of(student, wide_teacher), student, wide_teacher)
    probe = probe_of(student, teacher)
    probe.logit_t = probe.logit_t + 1
    with pytest.raises(UserError, match="teacher's last nn.Linear does not map its pooled feature to its logits"):
        CRCDDistiller(adapter_opt(with_grad=True), probe, student, teacher)
    probe = probe_of(student, teacher)
    probe.logit_s = probe.logit_s + 1
    with pytest.raises(UserError, match="student's last nn.Linear"):
        CRCDDistiller(adapter_opt(with_grad=True), probe, student, teacher)
    embedded = CRCDDistiller(adapter_opt(with_grad=True, grad_kd_type="crcd"), probe_of(student, wide_teacher),
                             student, wide_teacher)
    assert embedded.grad_criterion.embed_t.linear.in_features == 256
