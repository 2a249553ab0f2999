"""Shared by the tests of AB, FT, FSP and IRG (test_ab.py, test_ft.py, test_fsp.py, test_irg.py): the golden cases of
fixtures/classic2_golden.json and their check, peer signatures, and the fake features, probe and options their
adapters are built from."""
import argparse
import inspect
import json
import os

import torch
from torch import nn

from distiller_zoo.base import ModelOutput, ProbeShapes

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "fixtures", "classic2_golden.json")
with open(GOLDEN_PATH) as _f:
    GOLDEN = json.load(_f)

TOL = dict(rtol=1e-9, atol=1e-12)


def tensors(nested_lists):
    return [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in nested_lists]


def check_against_golden(case, value, inputs):
    """Compare the value (scalar or list) and the gradients of its sum w.r.t. every named input list."""
    expected = case["value"]
    values = value if isinstance(value, list) else [value]
    expected_values = expected if isinstance(expected, list) else [expected]
    assert len(values) == len(expected_values)
    for got, want in zip(values, expected_values):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL)
    flat = [t for name in case["grads"] for t in inputs[name]]
    grads = torch.autograd.grad(sum(values), flat, allow_unused=True)
    expected_grads = [torch.tensor(g, dtype=torch.float64) for name in case["grads"] for g in case["grads"][name]]
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(torch.zeros_like(want) if got is None else got, want, **TOL)


def parameters_of(fn):
    return [(p.name, p.default, p.kind == p.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


E = inspect.Parameter.empty


# ---- Distiller adapters -------------------------------------------------------------------------------------------

def fake_feats(batch, channels, sizes, requires_grad=False):
    """[stem, stage1..3, pooled] like `model(x, is_feat=True)`: stem has the first stage's shape."""
    maps = [torch.randn(batch, channels[0], sizes[0], sizes[0])]
    maps += [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)]
    feats = maps + [torch.randn(batch, channels[-1])]
    return [f.requires_grad_(requires_grad) for f in feats]


STUDENT = ((16, 32, 64), (32, 16, 8))
TEACHER = ((32, 64, 128), (32, 16, 8))


def probe_for(student=STUDENT, teacher=TEACHER):
    return ProbeShapes(feat_s=fake_feats(2, *student), feat_t=fake_feats(2, *teacher), logit_s=torch.randn(2, 10),
                       logit_t=torch.randn(2, 10), n_data=100, num_classes=10)


def outputs_for(student=STUDENT, teacher=TEACHER):
    out_s = ModelOutput(logits=torch.randn(4, 10), feats=fake_feats(4, *student, requires_grad=True))
    out_t = ModelOutput(logits=torch.randn(4, 10), feats=fake_feats(4, *teacher))
    return out_s, out_t


def options(distiller_cls, *argv):
    parser = argparse.ArgumentParser()
    distiller_cls.add_args(parser)
    return parser.parse_args(list(argv))


class StubStudent(nn.Module):
    """Just enough of a model for init_modules: get_feat_modules()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 16, 3)

    def get_feat_modules(self):
        return nn.ModuleList([self.body])


def grad_reaches(tensor_or_module):
    if isinstance(tensor_or_module, nn.Module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in tensor_or_module.parameters())
    return tensor_or_module.grad is not None and tensor_or_module.grad.abs().sum() > 0
