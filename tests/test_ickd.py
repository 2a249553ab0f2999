"""ICKD-C (Liu et al., ICCV 2021): golden value, gradients and BatchNorm state, state_dict keys, adapter."""
from argparse import Namespace

import pytest
import torch

from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, StepContext, get_distiller_class
from distiller_zoo.ICKD import ICKDDistiller, ICKDLoss
from helper.errors import UserError
from models import build_model
from tests.golden_dist_mlkd_ickd import GOLDEN, assert_grads, decoded_inputs, make_opt
from tests.golden_json import assert_close, decode


# ---- golden value, gradients and BatchNorm state ------------------------------------------------------------------

def build_ickd(case, faithful):
    dims = case["dims"]
    loss = ICKDLoss(Namespace(s_dim=dims["s_dim"], t_dim=dims["t_dim"], feat_dim=dims["t_dim"]), faithful).double()
    state = {name: decode(value) for name, value in {**case["params"], **case["buffers"]}.items()}
    missing = {k for k in loss.load_state_dict(state, strict=False).missing_keys if "num_batches" not in k}
    assert missing == ({k for k in loss.state_dict() if k.startswith("embed_t.") and "num_batches" not in k}
                       if faithful else set())
    return loss.train(case["train"])


@pytest.mark.parametrize("faithful", [False, True], ids=["default", "faithful"])
@pytest.mark.parametrize("case", GOLDEN["ICKD"], ids=lambda c: "train" if c["train"] else "eval")
def test_ickd_matches_the_official_formula_with_gradients_and_batchnorm_state(case, faithful):
    loss = build_ickd(case, faithful)
    inputs = decoded_inputs(case)
    values = loss([inputs["f_s"]], [inputs["f_t"]])
    assert isinstance(values, list) and len(values) == 1 and values[0].dim() == 0
    assert_close(values[0], decode(case["value"]))
    params = dict(loss.embed_s.named_parameters(prefix="embed_s"))
    assert_grads(values[0], {**inputs, **params}, case["grads"])
    for name, expected in case["buffers_after"].items():
        assert_close(loss.state_dict()[name], decode(expected))
    if faithful:
        assert all(p.grad is None and not p.requires_grad for p in loss.embed_t.parameters())


# ---- official state_dict keys -------------------------------------------------------------------------------------

def test_ickd_state_dict_keeps_the_official_keys_and_builds_the_teacher_embedding_only_when_faithful():
    opt = Namespace(s_dim=32, t_dim=64, feat_dim=64)
    embed_s = ["embed_s.conv2d.weight", "embed_s.l2norm.weight", "embed_s.l2norm.bias",
               "embed_s.l2norm.running_mean", "embed_s.l2norm.running_var", "embed_s.l2norm.num_batches_tracked"]
    assert list(ICKDLoss(opt).state_dict()) == embed_s
    faithful = ICKDLoss(opt, faithful=True)
    assert list(faithful.state_dict()) == embed_s + [k.replace("embed_s", "embed_t") for k in embed_s]
    assert faithful.embed_t.conv2d.weight.shape == (64, 32, 1, 1)  # official: Embed(s_dim, feat_dim)
    assert isinstance(faithful.embed_s.l2norm, torch.nn.BatchNorm2d)
    with pytest.raises(UserError, match="t_dim"):
        ICKDLoss(Namespace(s_dim=32, t_dim=64, feat_dim=128))


# ---- adapter ------------------------------------------------------------------------------------------------------

def model_outputs(name, x):
    model = build_model(name, 100).eval()
    feats, logits = model(x, is_feat=True)
    return ModelOutput(logits, feats)


@pytest.mark.parametrize("student,teacher", [("resnet8x4", "resnet32x4"), ("wrn_16_2", "wrn_40_2")])
@pytest.mark.parametrize("faithful", [False, True])
def test_ickd_adapter_embeds_the_students_last_stage_to_the_teachers_width(student, teacher, faithful):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    out_s, out_t = model_outputs(student, x), model_outputs(teacher, x)
    probe = ProbeShapes(out_s.feats, out_t.feats, out_s.logits, out_t.logits, n_data=10, num_classes=100)
    distiller = get_distiller_class("ickd")(make_opt("ickd", ickd_faithful=faithful), probe, None, None)
    assert isinstance(distiller, ICKDDistiller) and distiller.needs.feats and not distiller.needs.preact
    s_dim, t_dim = out_s.last_stage.shape[1], out_t.last_stage.shape[1]
    assert distiller.criterion.embed_s.conv2d.weight.shape == (t_dim, s_dim, 1, 1)
    assert hasattr(distiller.criterion, "embed_t") == faithful
    trainable = [name for name, p in distiller.named_parameters() if p.requires_grad]
    assert trainable == ["criterion.embed_s.conv2d.weight", "criterion.embed_s.l2norm.weight",
                         "criterion.embed_s.l2norm.bias"]
    feat_s = out_s.last_stage.detach().requires_grad_(True)
    out_s.feats[-2] = feat_s
    terms = distiller.loss(out_s, out_t, Batch(x, torch.tensor([0, 1])), StepContext())
    assert list(terms) == ["ickd"] and terms["ickd"].dim() == 0
    expected = distiller.criterion.batch_loss(feat_s, out_t.last_stage)
    torch.testing.assert_close(terms["ickd"], expected)
    terms["ickd"].backward()
    assert feat_s.grad.abs().sum() > 0 and distiller.criterion.embed_s.conv2d.weight.grad.abs().sum() > 0
