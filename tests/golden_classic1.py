"""Shared by the tests of the classic losses (test_kd.py, test_fitnet.py, test_at.py, test_sp.py, test_cc.py,
test_vid.py, test_rkd.py, test_pkt.py, test_nst.py, test_kdsvd.py, test_models_util.py): the golden cases of
fixtures/classic1_golden.json, RepDistiller's signatures, the adapters built on fake features, and the checks run for
each loss (golden value and gradients, signature, adapter)."""
import argparse
import inspect
import json
import os

import torch

from distiller_zoo.AT import Attention
from distiller_zoo.base import ModelOutput, ProbeShapes, get_distiller_class, StepContext
from distiller_zoo.CC import Correlation
from distiller_zoo.FitNet import HintLoss
from distiller_zoo.KD import DistillKL
from distiller_zoo.KDSVD import KDSVD
from distiller_zoo.NST import NSTLoss
from distiller_zoo.PKT import PKT
from distiller_zoo.RKD import RKDLoss
from distiller_zoo.SP import Similarity
from distiller_zoo.VID import VIDLoss
from tests.golden_json import assert_close, decode, with_grad
from models.util import (ConnectorV2, Connector, ConvReg, Embed, LinearEmbed, MLPEmbed, Normalize, Paraphraser,
                         PoolEmbed, Regress, Translator)

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "classic1_golden.json")
with open(GOLDEN) as _f:
    CASES = json.load(_f)

LOSSES = {cls.__name__: cls for cls in
          (DistillKL, HintLoss, Attention, Similarity, Correlation, VIDLoss, RKDLoss, PKT, NSTLoss, KDSVD)}


def grad_or_zero(x):
    if isinstance(x, list):
        return [grad_or_zero(t) for t in x]
    return x.grad if x.grad is not None else torch.zeros_like(x)


def run_golden_case(case):
    module = LOSSES[case["loss"]](**case["init"]).double()
    if "params" in case:
        module.load_state_dict({name: decode(t) for name, t in case["params"].items()})
    inputs = {name: with_grad(decode(x)) for name, x in case["inputs"].items()}
    value = module(**inputs)
    total = sum(value) if isinstance(value, list) else value
    total.sum().backward()
    return module, inputs, value


def cases_of(loss):
    """The names of the golden cases of one loss class (by its name)."""
    return sorted(name for name, case in CASES.items() if case["loss"] == loss)


# The body of test_loss_value_and_input_gradients_match_the_reference_formula (one file per loss).
def loss_value_and_input_gradients_match_the_reference_formula(name):
    case = CASES[name]
    module, inputs, value = run_golden_case(case)
    assert_close(value, decode(case["value"]))
    for input_name, expected in case["grads"].items():
        assert_close(grad_or_zero(inputs[input_name]), decode(expected))
    for param_name, expected in case.get("param_grads", {}).items():
        assert_close(dict(module.named_parameters())[param_name].grad, decode(expected))


PEER_SIGNATURES = {
    DistillKL: (["T"], ["y_s", "y_t", "temp"]),
    HintLoss: ([], ["f_s", "f_t"]),
    Attention: (["p"], ["g_s", "g_t"]),
    Similarity: ([], ["g_s", "g_t"]),
    Correlation: ([], ["f_s", "f_t"]),
    VIDLoss: (["num_input_channels", "num_mid_channel", "num_target_channels", "init_pred_var", "eps"],
              ["input", "target"]),
    RKDLoss: (["w_d", "w_a"], ["f_s", "f_t"]),
    PKT: ([], ["f_s", "f_t"]),
    NSTLoss: ([], ["g_s", "g_t"]),
    KDSVD: (["k"], ["g_s", "g_t"]),
    ConvReg: (["s_shape", "t_shape", "use_relu"], ["x"]),
    Regress: (["dim_in", "dim_out"], ["x"]),
    Embed: (["dim_in", "dim_out"], ["x"]),
    LinearEmbed: (["dim_in", "dim_out"], ["x"]),
    MLPEmbed: (["dim_in", "dim_out"], ["x"]),
    Normalize: (["power"], ["x"]),
    PoolEmbed: (["layer", "dim_out", "pool_type"], ["x"]),
    Connector: (["s_shapes", "t_shapes"], ["g_s"]),
    ConnectorV2: (["s_shapes", "t_shapes"], ["g_s"]),
    Paraphraser: (["t_shape", "k", "use_bn"], ["f_s", "is_factor"]),
    Translator: (["s_shape", "t_shape", "k", "use_bn"], ["f_s"]),
}


PEER_DEFAULTS = {
    Attention: {"p": 2}, VIDLoss: {"init_pred_var": 5.0, "eps": 1e-5}, RKDLoss: {"w_d": 25, "w_a": 50},
    KDSVD: {"k": 1}, ConvReg: {"use_relu": True}, Regress: {"dim_in": 1024, "dim_out": 1024},
    Embed: {"dim_in": 1024, "dim_out": 128}, LinearEmbed: {"dim_in": 1024, "dim_out": 128},
    MLPEmbed: {"dim_in": 1024, "dim_out": 128}, Normalize: {"power": 2},
    PoolEmbed: {"layer": 0, "dim_out": 128, "pool_type": "avg"}, Paraphraser: {"k": 0.5, "use_bn": False},
    Translator: {"k": 0.5, "use_bn": True},
}


# The body of test_constructor_and_forward_keep_repdistillers_signatures (one file per loss, test_models_util.py).
def constructor_and_forward_keep_repdistillers_signatures(cls):
    init_names, forward_names = PEER_SIGNATURES[cls]
    own_init = cls.__init__ is not torch.nn.Module.__init__
    init = inspect.signature(cls.__init__).parameters if own_init else {}
    assert list(init)[1:] == init_names
    assert list(inspect.signature(cls.forward).parameters)[1:] == forward_names
    defaults = {n: p.default for n, p in init.items() if p.default is not inspect.Parameter.empty}
    assert defaults == PEER_DEFAULTS.get(cls, {})
    if cls is DistillKL:
        assert inspect.signature(cls.forward).parameters["temp"].default is None


# ---- adapters -----------------------------------------------------------------------------------------------------

def fake_feats(batch, channels, sizes, pooled_dim, grad=False):
    """[stem, stage1..n, pooled] as `model(x, is_feat=True)` returns them."""
    feats = [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)] + [torch.randn(batch, pooled_dim)]
    return [f.requires_grad_(grad) for f in feats]


STUDENT = ([16, 16, 32, 64], [32, 32, 16, 8], 64)
TEACHER = ([32, 32, 64, 128], [32, 32, 16, 8], 128)
SAME_CHANNEL_TEACHER = ([16, 16, 32, 64], [32, 32, 16, 8], 64)


def make_opt(**overrides):
    opt = dict(kd_T=4, feat_dim=16, hint_layer=2, mode="exact", nce_k=16, nce_t=0.07, nce_m=0.5, init_epochs=30)
    opt.update(overrides)
    return argparse.Namespace(**opt)


def make_probe(student=STUDENT, teacher=TEACHER):
    return ProbeShapes(feat_s=fake_feats(2, *student), feat_t=fake_feats(2, *teacher),
                       logit_s=torch.randn(2, 10), logit_t=torch.randn(2, 10), n_data=100, num_classes=10)


def build(name, student=STUDENT, teacher=TEACHER, **opt):
    return get_distiller_class(name)(make_opt(**opt), make_probe(student, teacher), torch.nn.Identity(),
                                     torch.nn.Identity())


# Which of [stem, stage1, stage2, stage3, pooled] each method reads.
USED_FEATURES = {"hint": [2], "attention": [1, 2, 3], "nst": [1, 2, 3], "vid": [1, 2, 3], "kdsvd": [1, 2, 3],
                 "similarity": [3], "correlation": [4], "rkd": [4], "pkt": [4]}


# The body of test_adapter_loss_is_finite_and_trains_student_features_and_own_modules (one file per method).
def adapter_loss_is_finite_and_trains_student_features_and_own_modules(name):
    torch.manual_seed(0)
    teacher = SAME_CHANNEL_TEACHER if name == "kdsvd" else TEACHER
    distiller = build(name, teacher=teacher)
    assert distiller.needs.feats and not distiller.needs.preact
    feat_s = fake_feats(4, *STUDENT, grad=True)
    out_s = ModelOutput(torch.randn(4, 10), feat_s)
    out_t = ModelOutput(torch.randn(4, 10), fake_feats(4, *teacher))
    terms = distiller.loss(out_s, out_t, None, StepContext())
    assert list(terms) == [name] and terms[name].dim() == 0 and torch.isfinite(terms[name])
    terms[name].backward()
    for i, f in enumerate(feat_s):
        reached = f.grad is not None and f.grad.abs().sum() > 0
        assert reached == (i in USED_FEATURES[name]), f"feature {i}"
    for param_name, p in distiller.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, param_name
