"""HKD: golden values/gradients of both weightings (the authors' epoch schedule and SemCKD's), its signature, flags
and Distiller adapter."""
import argparse
import inspect
import json
import os

import pytest
import torch

from distiller_zoo.base import ModelOutput, ProbeShapes, StepContext
from distiller_zoo.HKD import HKDDistiller, HKDLoss, combined_prob_loss
from tests.golden_json import assert_close

with open(os.path.join(os.path.dirname(__file__), "fixtures", "classic2_golden.json")) as _f:
    CASES = json.load(_f)["HKD"]


def tensors(nested_lists):
    return [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in nested_lists]


def case_id(case):
    return "-".join(f"{k}{v}" for k, v in case["params"].items()) + f"-epoch{case['epoch']}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_hkd_loss_matches_the_authors_and_semckds_weightings_values_and_gradients(case):
    f_s, f_t = tensors(case["inputs"]["f_s"]), tensors(case["inputs"]["f_t"])
    value = HKDLoss(**case["params"])(f_s, f_t, epoch=case["epoch"])
    assert_close(value, torch.tensor(case["value"], dtype=torch.float64))
    grads = torch.autograd.grad(value, f_s + f_t)
    expected = [torch.tensor(g, dtype=torch.float64) for g in case["grads"]["f_s"] + case["grads"]["f_t"]]
    assert_close(list(grads), expected)


def test_default_weighting_is_the_authors_epoch_schedule_with_the_penultimate_layer_at_one():
    f_s = [torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 2)]
    f_t = [torch.randn(4, 6), torch.randn(4, 2), torch.randn(4, 7)]
    layer = [combined_prob_loss(t, s) for s, t in zip(f_s, f_t)]
    criterion = HKDLoss(init_weight=10, decay=0.5)
    for epoch, shared in ((1, 10.0), (2, 5.0), (4, 1.25)):
        assert criterion.layer_weights(3, epoch) == [shared, shared, 1]
        torch.testing.assert_close(criterion(f_s, f_t, epoch=epoch), shared * (layer[0] + layer[1]) + layer[2])
    torch.testing.assert_close(criterion(f_s, f_t), 10 * (layer[0] + layer[1]) + layer[2])


def test_faithful_weighting_is_semckds_first_layer_only_at_every_epoch():
    criterion = HKDLoss(init_weight=10, decay=0.5, faithful=True)
    assert criterion.layer_weights(3, 1) == criterion.layer_weights(3, 9) == [10, 1, 1]


def test_signature_keeps_semckds_names_and_adds_the_epoch():
    def params(fn):
        return [(p.name, p.default, p.kind == p.KEYWORD_ONLY)
                for p in inspect.signature(fn).parameters.values() if p.name != "self"]

    empty = inspect.Parameter.empty
    assert params(HKDLoss.__init__) == [("init_weight", 100, False), ("decay", 0.7, False), ("faithful", False, True)]
    assert params(HKDLoss.forward) == [("f_s", empty, False), ("f_t", empty, False), ("epoch", 1, False)]


def options(*argv):
    parser = argparse.ArgumentParser()
    HKDDistiller.add_args(parser)
    return parser.parse_args(list(argv))


def fake_feats(batch, channels, sizes, requires_grad=False):
    """[stem, stage1..3, pooled] like `model(x, is_feat=True)`."""
    maps = [torch.randn(batch, channels[0], sizes[0], sizes[0])]
    maps += [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)]
    return [f.requires_grad_(requires_grad) for f in maps + [torch.randn(batch, channels[-1])]]


def probe():
    return ProbeShapes(feat_s=fake_feats(2, (8, 16, 32), (8, 4, 2)), feat_t=fake_feats(2, (16, 32, 64), (8, 4, 2)),
                       logit_s=torch.randn(2, 10), logit_t=torch.randn(2, 10), n_data=100, num_classes=10)


def test_flags_keep_semckds_names_and_defaults_and_faithful_switches_the_weighting():
    opt = options()
    assert (opt.hkd_initial_weight, opt.hkd_decay, opt.hkd_faithful) == (100, 0.7, False)
    assert not HKDDistiller(opt, probe(), None, None).criterion.faithful
    assert HKDDistiller(options("--hkd_faithful"), probe(), None, None).criterion.faithful


def test_adapter_weights_the_stage_features_by_the_contexts_epoch_and_reaches_every_student_stage():
    distiller = HKDDistiller(options("--hkd_initial_weight", "4", "--hkd_decay", "0.5"), probe(), None, None)
    out_s = ModelOutput(torch.randn(4, 10), fake_feats(4, (8, 16, 32), (8, 4, 2), requires_grad=True))
    out_t = ModelOutput(torch.randn(4, 10), fake_feats(4, (16, 32, 64), (8, 4, 2)))
    for epoch in (1, 3):
        term = distiller.loss(out_s, out_t, None, StepContext(epoch=epoch))["hkd"]
        torch.testing.assert_close(term, HKDLoss(4, 0.5)(out_s.stage_feats, out_t.stage_feats, epoch=epoch))
    term.backward()
    assert torch.isfinite(term)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in out_s.stage_feats)
