"""Shared by the tests of logit standardisation, SimKD, SRRL and DOT (test_plugin_logit_stand.py, test_simkd.py,
test_srrl.py, test_plugin_dot.py): the golden cases of fixtures/ls_simkd_dot_golden.json, their decoding, signatures,
SimKD/SRRL modules loaded from a case, and the adapters built on real networks."""
import argparse
import inspect
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import ProbeShapes, get_distiller_class
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


def params_of(fn):
    return [(p.name, p.default, p.kind == p.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


E = inspect.Parameter.empty


def module_from(case):
    """The module and a float64 classifier loaded with the case's parameters and running statistics."""
    params = case["params"]
    module = (SimKD if case["kind"] == "SimKD" else SRRL)(**case["init"]).double()
    module.load_state_dict({k: v for k, v in params.items() if not k.startswith("cls_t.")}, strict=False)
    cls_t = nn.Linear(*params["cls_t.weight"].shape[::-1]).double()
    cls_t.load_state_dict({"weight": params["cls_t.weight"], "bias": params["cls_t.bias"]})
    module.train(case["mode"] == "train")
    return module, cls_t


# The body of test_projector_outputs_gradients_and_running_stats_match_the_reference (test_simkd.py, test_srrl.py).
def projector_outputs_gradients_and_running_stats_match_the_reference(name):
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
