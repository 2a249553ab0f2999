"""Shared by the tests of ReviewKD and OFD (test_reviewkd.py, test_ofd.py): the golden cases of
fixtures/review_ofd_golden.json and their loading into modules, the CIFAR networks and features, the distillers built on
them, and the checks run for each method (every teacher/student pair, one training step, bf16 autocast)."""
import argparse
import functools
import json
import os

import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import Batch, ModelOutput, ProbeShapes, StepContext, get_distiller_class
from models import build_model
from tests.golden_json import assert_close, decode, with_grad

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "review_ofd_golden.json")
with open(GOLDEN) as _f:
    CASES = json.load(_f)

CIFAR_NAMES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
               "resnet32x4", "resnet8x4_double", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8",
               "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]  # scripts/run_cifar_vanilla.sh
SHUFFLENETS = ("ShuffleV1", "ShuffleV2")


def decode_dict(x, grad=False):
    """A dict of JSON tensors decoded (as leaves requiring grad if asked)."""
    return {k: with_grad(decode(v)) if grad else decode(v) for k, v in x.items()}


def parse(name, argv=()):
    parser = argparse.ArgumentParser()
    get_distiller_class(name).add_args(parser)
    return parser.parse_args(list(argv))


def probe_of(feat_s, feat_t, num_classes=100):
    return ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=torch.zeros(2, num_classes),
                       logit_t=torch.zeros(2, num_classes), n_data=10, num_classes=num_classes)


def load_params(module, params):
    """Put the fixture's parameters into `module` (BN running buffers keep their fresh values)."""
    state = module.state_dict()
    state.update(decode_dict(params))
    module.load_state_dict(state)


def check_grads_and_buffers(module, case, prefix=""):
    for key, expected in case["param_grads"].items():
        assert_close(module.get_parameter(prefix + key).grad, decode(expected))
    state = module.state_dict()
    for key, expected in case["buffers"].items():
        assert_close(state[prefix + key].double(), decode(expected))


@functools.lru_cache(maxsize=None)
def network(name):
    torch.manual_seed(0)
    return build_model(name, 100).eval()


@functools.lru_cache(maxsize=None)
def features(name, preact):
    """(feats, logits) of `network(name)` on a fixed batch of 2."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return network(name)(x, is_feat=True, preact=preact)


def build(method, teacher, student, argv=()):
    needs = get_distiller_class(method).needs
    feat_s, logit_s = features(student, needs.preact)
    feat_t, logit_t = features(teacher, needs.teacher_needs.preact)
    probe = ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=10, num_classes=100)
    return get_distiller_class(method)(parse(method, argv), probe, network(student), network(teacher))


def loss_step(method, teacher, student, argv=()):
    distiller = build(method, teacher, student, argv).train()
    needs = distiller.needs
    feat_s, logit_s = features(student, needs.preact)
    feat_t, logit_t = features(teacher, needs.teacher_needs.preact)
    feat_s = [f.clone().requires_grad_(True) for f in feat_s]
    x = torch.randn(2, 3, 32, 32)
    value = distiller.loss(ModelOutput(logit_s, feat_s), ModelOutput(logit_t, feat_t), Batch(x, None),
                           StepContext())[method]
    value.backward()
    return distiller, value, feat_s


# The body of test_every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss (test_reviewkd.py,
# test_ofd.py).
def every_student_of_every_readme_teacher_builds_and_gives_a_finite_loss(method, teacher):
    for student in CIFAR_NAMES:
        distiller, value, feat_s = loss_step(method, teacher, student)
        assert value.dim() == 0 and torch.isfinite(value), (teacher, student)
        used = feat_s[1:-1] if method == "ofd" else feat_s[1:]
        assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in used), (teacher, student)
        assert all(torch.isfinite(p.grad).all() for p in distiller.parameters() if p.grad is not None)


CROSS_PAIRS = [("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "wrn_16_2"),
               ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("resnet56", "resnet20"), ("vgg13", "resnet8x4")]
STEP_CASES = [(pair, method, False) for pair in CROSS_PAIRS for method in ("reviewkd", "ofd")] + \
    [(pair, method, True) for pair in (("vgg13", "resnet8x4"), ("resnet32x4", "ShuffleV1"))
     for method in ("reviewkd", "ofd")]


def step_cases(method):
    """The STEP_CASES of one method, with the ids they had as one parametrization of both methods."""
    return [pytest.param(pair, m, faithful, id=f"{'->'.join(pair)}-{m}{'-faithful' if faithful else ''}")
            for pair, m, faithful in STEP_CASES if m == method]


# The body of test_one_training_step_on_cross_architecture_pairs_moves_student_and_method (test_reviewkd.py,
# test_ofd.py).
def one_training_step_on_cross_architecture_pairs_moves_student_and_method(pair, method, faithful):
    teacher_name, student_name = pair
    torch.manual_seed(0)
    teacher, student = build_model(teacher_name, 100).eval(), build_model(student_name, 100).train()
    cls = get_distiller_class(method)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student.eval()
        feat_s, logit_s = student(x, is_feat=True, preact=cls.needs.preact)
        feat_t, logit_t = teacher(x, is_feat=True, preact=cls.needs.teacher_needs.preact)
        student.train()
    probe = ProbeShapes(feat_s=feat_s, feat_t=feat_t, logit_s=logit_s, logit_t=logit_t, n_data=10, num_classes=100)
    distiller = cls(parse(method, [f"--{method}_faithful"] if faithful else []), probe, student, teacher).train()
    needs = distiller.needs
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_params, method_params = list(student.parameters()), list(distiller.parameters())
    before = [p.detach().clone() for p in student_params + method_params]
    optimizer = torch.optim.SGD(student_params + method_params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    feats, logits = student(x, is_feat=True, preact=needs.preact)
    with torch.no_grad():
        t_feats, t_logits = teacher(x, is_feat=True, preact=needs.teacher_needs.preact)
    terms = distiller.loss(ModelOutput(logits, feats), ModelOutput(t_logits, t_feats), Batch(x, None), StepContext())
    loss = F.cross_entropy(logits, torch.tensor([3, 7])) + 0.001 * terms[method]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method_params)
    moved = [not torch.equal(b, p) for b, p in zip(before, student_params + method_params)]
    assert any(moved[:len(student_params)]) and all(moved[len(student_params):])
    assert not teacher.training  # faithful OFD runs it in train mode inside the step, then restores mode and buffers
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())


# The body of test_losses_are_float32_under_bf16_autocast (test_reviewkd.py, test_ofd.py).
def losses_are_float32_under_bf16_autocast(method):
    distiller = build(method, "resnet32x4", "resnet8x4").train()
    needs = distiller.needs
    feat_s, logit_s = features("resnet8x4", needs.preact)
    feat_t, logit_t = features("resnet32x4", needs.teacher_needs.preact)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = distiller.loss(ModelOutput(logit_s, [f.bfloat16() for f in feat_s]),
                               ModelOutput(logit_t, [f.bfloat16() for f in feat_t]),
                               Batch(torch.zeros(2, 3, 32, 32), None), StepContext())[method]
    assert value.dtype == torch.float32 and torch.isfinite(value)
