"""Every registered method: one real training step through the shared loop with a cross-architecture pair."""
import copy

import pytest
import torch

import train_student
from distiller_zoo.base import distiller_registry
from helper.errors import UserError
from helper.loops import train_epoch
from models import build_model
from distiller_zoo.KD import DistillKL

N_DATA, BATCH, NCE_K, CLASSES = 64, 8, 16, 10
# Teacher resnet8x4 with a VGG and a ShuffleNet student; same-family fallback where a method needs equal channels.
PAIRS = [("resnet8x4", "vgg8"), ("resnet8x4", "ShuffleV1")]
SAME_CHANNEL_PAIR = ("resnet20", "resnet8")


def method_opt(name, student):
    opt = train_student.parse_option(["--path_t", "unused.pth", "--distill", name, "--model_s", student,
                                      "--device", "cpu", "--nce_k", str(NCE_K), "--batch_size", str(BATCH),
                                      "--num_workers", "0", "--init_epochs", "1"])
    return opt


def build(name, teacher_name, student_name):
    torch.manual_seed(0)
    opt = method_opt(name, student_name)
    teacher = build_model(teacher_name, CLASSES)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model(student_name, CLASSES)
    method = distiller_registry[name]
    probe = train_student.probe_shapes(student, teacher, method.needs, 32, N_DATA, CLASSES, torch.device("cpu"))
    distiller = method(opt, probe, student, teacher)
    return opt, teacher, student, distiller


def one_batch(needs):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    targets = torch.randint(0, CLASSES, (BATCH,), generator=g)
    items = [images, targets]
    if needs.index or needs.contrast_index:
        index = torch.randperm(N_DATA, generator=g)[:BATCH]
        items.append(index)
    if needs.contrast_index:
        negatives = torch.randint(0, N_DATA, (BATCH, NCE_K), generator=g)
        items.append(torch.cat([index[:, None], negatives], dim=1))
    return [tuple(items)]


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
    (opt, teacher, student, distiller), refusals = build_for_method(name)
    assert all("\n" not in r for r in refusals)
    loader = one_batch(distiller.needs)
    teacher_before = snapshot(teacher)
    if distiller.needs.init_stage:
        init_modules = torch.nn.ModuleList(distiller.init_modules(student))
        init_before = snapshot(init_modules)
        init_opt = torch.optim.SGD(init_modules.parameters(), lr=0.1, momentum=0.9)

        def init_compute(batch):
            out_s = train_student.forward_model(student, batch.images, distiller.needs)
            with torch.no_grad():
                out_t = train_student.forward_model(teacher, batch.images, distiller.needs)
            return None, {"init": distiller.init_loss(out_s, out_t, batch)}

        stats = train_epoch(1, loader, init_compute, init_opt, lambda *step: {"init": 1.0}, opt,
                            train_modules=[init_modules], eval_modules=[student, teacher])
        assert torch.isfinite(torch.tensor(stats["loss"]))
        assert changed(init_before, init_modules), "init stage did not change its modules"
        distiller.on_init_end()

    student_before, distiller_before = snapshot(student), snapshot(distiller)
    weights = train_student.TermWeights(opt, distiller.term_weights(opt))
    compute = train_student.distill_step(student, teacher, distiller, DistillKL(opt.kd_T), weights)
    groups = [{"params": list(student.parameters())}] + distiller.param_groups(opt)
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    stats = train_epoch(1, loader, compute, optimizer, weights, opt, [student, distiller], [teacher])

    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert changed(student_before, student), "student unchanged"
    trainable = [p for g in distiller.param_groups(opt) for p in g["params"]]
    if trainable:
        moved = changed(distiller_before, distiller)
        assert moved, f"{name}: its trainable modules did not change"
    teacher_after = snapshot(teacher)
    for key, value in teacher_before.items():
        assert torch.equal(value, teacher_after[key]), f"teacher {key} changed"
    assert not any(p.requires_grad for p in teacher.parameters())


def test_fsp_refuses_unequal_channels_at_start_up():
    with pytest.raises(UserError, match="FSP") as err:
        build("fsp", "resnet8x4", "vgg8")
    assert "\n" not in str(err.value)


def test_method_terms_are_weighted_by_beta_unless_the_method_overrides():
    opt = method_opt("attention", "resnet8")
    opt.gamma, opt.alpha, opt.beta = 0.5, 0.25, 1000.0
    weights = train_student.TermWeights(opt, {})
    assert (weights["cls"], weights["div"], weights["attention"]) == (0.5, 0.25, 1000.0)
    assert train_student.TermWeights(opt, {"x": 2.0})["x"] == 2.0
    assert copy.copy(weights)["other"] == 1000.0
