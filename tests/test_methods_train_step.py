"""Every registered method: one real training step through the shared loop with a cross-architecture pair."""
import pytest
import torch

from distiller_zoo.base import distiller_registry
from helper.errors import UserError
from helper.engine.loop import train_epoch
from helper.engine.weights import TermWeights
from tests.student_utils import built, parse, shared_for, train

N_DATA, BATCH, NCE_K, CLASSES = 64, 8, 16, 10
# Teacher resnet8x4 with a VGG and a ShuffleNet student; same-family fallback where a method needs equal channels.
PAIRS = [("resnet8x4", "vgg8"), ("resnet8x4", "ShuffleV1")]
SAME_CHANNEL_PAIR = ("resnet20", "resnet8")


def method_opt(name, student):
    return parse("--distill", name, "--model_s", student, "--nce_k", str(NCE_K), "--batch_size", str(BATCH),
                 "--init_epochs", "1")


def build(name, teacher_name, student_name):
    shared = shared_for(teacher_name, CLASSES, N_DATA)
    return shared, built(method_opt(name, student_name), shared)


def one_batch(needs):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    targets = torch.randint(0, CLASSES, (BATCH,), generator=g)
    items = {"images": images, "targets": targets, "index": torch.randperm(N_DATA, generator=g)[:BATCH]}
    if needs.strong_view:
        items["images_strong"] = torch.randn(BATCH, 3, 32, 32, generator=g)
    return [items]


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return [k for k, v in module.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]


def build_for_method(name):
    """A cross-architecture pair if the method accepts one, else the same-channel pair; the refusal is a UserError."""
    refusals = []
    for teacher_name, student_name in PAIRS:
        try:
            return build(name, teacher_name, student_name), refusals
        except UserError as e:
            refusals.append(str(e))
    return build(name, *SAME_CHANNEL_PAIR), refusals


@pytest.mark.parametrize("name", sorted(distiller_registry))
def test_one_step_trains_student_and_method_and_leaves_teacher_alone(name):
    (shared, s), refusals = build_for_method(name)
    assert all("\n" not in r for r in refusals)
    loader = one_batch(s.distiller.needs)
    teacher_before = snapshot(shared.teacher)
    if s.distiller.needs.init_stage:
        init = s.init_trainee()
        init_modules = init.train_modules[0]
        init_before = snapshot(init_modules)
        train_epoch(1, loader, [init], torch.device("cpu"), teacher=shared.teacher)
        assert init.failed is None and torch.isfinite(init.meters["loss"].sum)
        assert changed(init_before, init_modules), "init stage did not change its modules"
        s.distiller.on_init_end()

    student_before, distiller_before = snapshot(s.student), snapshot(s.distiller)
    stats = train(s, shared, loader)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert changed(student_before, s.student), "student unchanged"
    trainable = [p for g in s.distiller.param_groups(s.opt) for p in g["params"]]
    if trainable:
        assert changed(distiller_before, s.distiller), f"{name}: its trainable modules did not change"
    teacher_after = snapshot(shared.teacher)
    for key, value in teacher_before.items():
        assert torch.equal(value, teacher_after[key]), f"teacher {key} changed"
    assert not any(p.requires_grad for p in shared.teacher.parameters())


def test_fsp_refuses_unequal_channels_at_start_up():
    with pytest.raises(UserError, match="FSP") as err:
        build("fsp", "resnet8x4", "vgg8")
    assert "\n" not in str(err.value)


def test_method_terms_are_weighted_by_beta_unless_the_method_overrides():
    opt = method_opt("attention", "resnet8")
    opt.gamma, opt.alpha, opt.beta = 0.5, 0.25, 1000.0
    weights = TermWeights(opt, {})
    assert (weights["cls"], weights["div"], weights["attention"]) == (0.5, 0.25, 1000.0)
    assert TermWeights(opt, {"x": 2.0})["x"] == 2.0
    step = weights(1, 0, 10)
    assert (step["cls"], step["attention"], step["other"]) == (0.5, 1000.0, 1000.0)
