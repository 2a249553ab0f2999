"""Shared by the tests of DIST, MLKD and ICKD (test_dist.py, test_mlkd.py, test_ickd.py): the golden cases of
fixtures/dist_mlkd_ickd_golden.json, their inputs and gradient checks, and the adapters' options and logit probe."""
import argparse
import json
import os

import torch

from distiller_zoo.base import ProbeShapes, get_distiller_class
from tests.golden_json import assert_close, decode, with_grad

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "fixtures", "dist_mlkd_ickd_golden.json")
with open(GOLDEN_PATH) as _f:
    GOLDEN = json.load(_f)


def decoded_inputs(case, names=None):
    names = names or list(case["inputs"])
    return {name: with_grad(decode(case["inputs"][name])) for name in names}


def assert_grads(value, inputs, expected):
    got = torch.autograd.grad(value, list(inputs.values()), retain_graph=True, allow_unused=True)
    for (name, tensor), grad in zip(inputs.items(), got):
        assert_close(torch.zeros_like(tensor) if grad is None else grad, decode(expected[name]))


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
