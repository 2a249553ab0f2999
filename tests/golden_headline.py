"""Shared by the tests of CTKD's temperature, DKD and CKD (test_plugin_ctkd.py, test_dkd.py, test_ckd.py): the golden
cases of fixtures/headline_golden.json, their decoding and comparison, the DKD/CKD golden check, and the adapters."""
import argparse
import json
import os

import torch

from distiller_zoo.base import ModelOutput, ProbeShapes, get_distiller_class
from distiller_zoo.CKD import CKDLoss
from distiller_zoo.DKD import DKDloss

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


# The body of test_loss_value_and_gradients_match_the_float64_reference (test_dkd.py, test_ckd.py).
def loss_value_and_gradients_match_the_float64_reference(name):
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
