"""The frozen teacher of a student run: its architecture (the checkpoint's `arch`, else --model_t, else RepDistiller's
folder-name fallback), checked and loaded strictly, and what it sees: the student's batches, or these re-normalised
and resized for a teacher that expects another input (`TeacherInput`).

What a teacher expects, in order: the optional checkpoint keys `input_size` (side in px), `mean` and `std` (3 floats
each, of images scaled to [0, 1]); else, for a torchvision:/timm: network in a file this repository did not write (no
`arch` key: a plain state_dict), the library's pretrained configuration (torchvision: 224 px, ImageNet's mean/std;
timm: the model's pretrained_cfg); else the dataset's batches as they are (this repository's checkpoints were trained
on them). --teacher_input dataset keeps the batches as they are; --teacher_input <px> resizes to that side.
"""
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD
from dataset.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from helper.errors import UserError
from helper.runs.files import extract_state_dict, load_checkpoint, load_weights
from helper.util import is_integer
from models import build_model, check_model_name, input_size, model_dict
from models.external import is_external, library_input

log = logging.getLogger("kd")
DATASET_NORMALISATION = {"cifar100": (CIFAR100_MEAN, CIFAR100_STD),
                         "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
                         "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


# ---- the teacher ------------------------------------------------------------------------------------------------
def teacher_name_from_path(path):
    """RepDistiller's fallback for published checkpoints: the architecture is the run folder's prefix."""
    segments = os.path.basename(os.path.dirname(os.path.abspath(path))).split("_")
    if segments[0] == "wrn":
        return "_".join(segments[:3])
    return segments[0]


def teacher_arch(ckpt, path, model_t=None):
    """The architecture a teacher checkpoint records, else --model_t, else its folder's prefix; a --model_t that
    contradicts the recorded one is refused."""
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if arch is not None:
        if not isinstance(arch, str) or arch not in model_dict:
            raise UserError(f"--path_t {path} records arch {arch!r}, which is not a model name of this repository; "
                            "pass a checkpoint written by train_teacher.py or fix its 'arch' entry")
        if model_t is not None and model_t != arch:
            raise UserError(f"--model_t {model_t} contradicts --path_t {path}, which records arch {arch!r}; drop "
                            "--model_t or pass the checkpoint of that network")
        return arch
    if model_t is not None:
        check_model_name(model_t, "--model_t")
        return model_t
    arch = teacher_name_from_path(path)
    if arch not in model_dict:
        raise UserError(f"--path_t {path}: no 'arch' in the checkpoint and folder prefix {arch!r} is not a model "
                        "name; pass --model_t ARCH (e.g. resnet32x4, torchvision:resnet18, timm:resnet10t) or put it "
                        "under save/models/<arch>_vanilla/")
    return arch


def check_teacher_classes(ckpt, path, num_classes):
    """The class count a teacher checkpoint records (when it records one) must be the dataset's, as an integer."""
    ckpt_classes = ckpt.get("num_classes", num_classes) if isinstance(ckpt, dict) else num_classes
    if not is_integer(ckpt_classes):
        raise UserError(f"--path_t {path} records num_classes {ckpt_classes!r}, not an integer; pass a checkpoint "
                        "written by train_teacher.py or fix its 'num_classes' entry")
    if ckpt_classes != num_classes:
        raise UserError(f"--path_t {path} has {ckpt_classes} classes but --dataset has {num_classes}")


def check_finite_weights(state_dict, path):
    """A teacher whose weights hold NaN or inf would only show up as a non-finite loss an epoch later."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"--path_t {path}: {key} holds NaN or inf values (the teacher diverged or the file is "
                            "damaged); pass a checkpoint of a healthy teacher, e.g. its <arch>_best.pth")


def load_teacher(path, num_classes, device, model_t=None, data_input=None, setting="auto"):
    """Build the teacher its checkpoint (or --model_t, or its folder) names, load it strictly, freeze it ->
    (teacher, arch). With `data_input` (an InputSpec of the dataset's batches) the teacher's expected input is
    resolved (`setting`: --teacher_input), logged, checked against its network, and adapted to when it differs."""
    ckpt = load_checkpoint(path)
    arch = teacher_arch(ckpt, path, model_t)
    check_teacher_classes(ckpt, path, num_classes)
    teacher = build_model(arch, num_classes)
    state_dict = extract_state_dict(ckpt)
    load_weights(teacher, state_dict, path, arch)
    check_finite_weights(state_dict, path)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    if data_input is not None:
        seen, source = expected_input(ckpt, arch, path, data_input, setting)
        check_teacher_input(arch, path, seen, data_input)
        log.info("teacher %s sees %s (%s)", arch, describe_input(seen, data_input), source)
        teacher = adapted(teacher, data_input, seen)
    return teacher.to(device), arch


def check_input_size(model_name, data, flag="--model"):
    """A network built for one input side (input_size[name]; None: any) must get the dataset's; `flag` names the
    flag that chose it (--model for train_teacher.py, --model_s for students)."""
    size = input_size[model_name]
    if size is not None and size != data.input_size:
        raise UserError(f"{flag} {model_name} expects {size}px inputs but --dataset gives "
                        f"{data.input_size}px; pick a network for this dataset")


# ---- what the teacher sees ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """Square 3-channel images of side `size` px, normalised as (x - mean) / std from [0, 1]; `name`: the dataset's."""
    size: int
    mean: tuple
    std: tuple
    name: str = field(default="", compare=False)


def dataset_input(dataset, size):
    """The InputSpec of --dataset's batches."""
    if dataset not in DATASET_NORMALISATION:
        raise UserError(f"--dataset {dataset}: its normalisation is unknown to the teacher's input adapter; add it to "
                        "helper/student/teacher.py DATASET_NORMALISATION")
    mean, std = DATASET_NORMALISATION[dataset]
    return InputSpec(size, tuple(mean), tuple(std), dataset)


def parse_teacher_input(value, flag="--teacher_input"):
    """'auto', 'dataset' or a side in px (an int)."""
    if value in ("auto", "dataset"):
        return value
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if size <= 0:
        raise UserError(f"{flag} {value!r}: use auto, dataset or a side in px such as 224")
    return size


def recorded_input(ckpt, label):
    """The checkpoint's optional input keys {'input_size': int, 'mean': (3 floats), 'std': (3 floats)}, checked;
    `label` names the file in messages ('--path_t save/t.pth')."""
    found = {}
    if not isinstance(ckpt, dict):
        return found
    size = ckpt.get("input_size")
    if size is not None:
        if not is_integer(size) or size <= 0:
            raise UserError(f"{label} records input_size {size!r}, not a side in px; fix or drop it")
        found["input_size"] = size
    for key in ("mean", "std"):
        value = ckpt.get(key)
        if value is None:
            continue
        if torch.is_tensor(value):
            value = value.flatten().tolist()
        if (not isinstance(value, (list, tuple)) or len(value) != 3 or
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value) or
                (key == "std" and not all(v > 0 for v in value))):
            raise UserError(f"{label} records {key} {value!r}, not 3 finite numbers"
                            f"{' above 0' if key == 'std' else ''}; fix or drop it")
        found[key] = tuple(float(v) for v in value)
    return found


def expected_input(ckpt, arch, path, data_input, setting="auto", flag="--teacher_input"):
    """(InputSpec the teacher sees, where it comes from) by the rule of this module's docstring; `setting` is the
    value of `flag` (--teacher_input; helper.evaluate's --input)."""
    setting = parse_teacher_input(setting, flag)
    if setting == "dataset":
        return data_input, f"{flag} dataset"
    recorded = recorded_input(ckpt, f"--path_t {path}" if flag == "--teacher_input" else path)
    if is_external(arch) and not (isinstance(ckpt, dict) and "arch" in ckpt):  # a library's file, not one of ours
        size, mean, std = library_input(arch)
        base, base_source = InputSpec(size, mean, std), f"{arch.split(':')[0]}'s pretrained configuration"
    else:
        base, base_source = data_input, "as trained in this repository: the dataset's batches"
    spec = InputSpec(recorded.get("input_size", base.size), recorded.get("mean", base.mean),
                     recorded.get("std", base.std))
    sources = [f"the checkpoint's {', '.join(recorded)}"] if recorded else []
    if len(recorded) < 3:
        sources.append(base_source)
    if setting != "auto":
        spec = InputSpec(setting, spec.mean, spec.std)
        sources.insert(0, f"{flag} {setting}")
    return spec, "; ".join(sources)


def check_teacher_input(arch, path, seen, data_input):
    """A teacher network built for one side must see that side."""
    size = input_size[arch]
    if size is None or size == seen.size:
        return
    gives = f"--dataset gives {data_input.size}px" if seen.size == data_input.size else \
        f"it would see {seen.size}px (--dataset: {data_input.size}px)"
    raise UserError(f"--path_t {path}: teacher {arch} expects {size}px inputs but {gives}; pass a teacher for this "
                    f"dataset (--path_t, --model_t) or --teacher_input {size}")


def same_input(a, b):
    return a.size == b.size and normalised_alike(a, b)


def normalised_alike(a, b):
    return all(math.isclose(x, y, rel_tol=0, abs_tol=1e-7) for x, y in zip(a.mean + a.std, b.mean + b.std))


def describe_input(seen, data_input):
    if same_input(seen, data_input):
        return f"the batches as they are ({seen.size}px, {data_input.name} normalisation)"
    size = (f"{seen.size}px (resized bilinearly from {data_input.size}px)" if seen.size != data_input.size
            else f"{seen.size}px")
    stats = (f"{data_input.name} normalisation" if normalised_alike(seen, data_input) else
             f"re-normalised from {data_input.name}'s mean/std to mean {fmt(seen.mean)} std {fmt(seen.std)}")
    return f"{size}, {stats}"


def fmt(values):
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def adapted(teacher, data_input, seen):
    """`teacher` itself when it expects the dataset's batches, else behind a TeacherInput adapter."""
    return teacher if same_input(seen, data_input) else TeacherInput(teacher, data_input, seen)


class TeacherInput(nn.Module):
    """A teacher that expects another input than the dataset's (as timm's distillation task re-normalises for its
    teacher): batches [B, 3, h, h] normalised with the dataset's mean/std are un-normalised, resized to the teacher's
    side (bilinear, align_corners=False, antialiased when shrinking, as torchvision's Resize) and normalised with the
    teacher's mean/std, then fed to the teacher: [B, 3, s, s]. Attributes the wrapper lacks are the teacher's."""

    def __init__(self, teacher, data_input, seen):
        super().__init__()
        self.teacher, self.size = teacher, seen.size
        self.register_buffer("data_mean", torch.tensor(data_input.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("data_std", torch.tensor(data_input.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("mean", torch.tensor(seen.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(seen.std).view(1, 3, 1, 1), persistent=False)

    def adapt(self, x):
        """[B, 3, h, w] in the dataset's normalisation -> [B, 3, size, size] in the teacher's."""
        images = x * self.data_std.to(x.dtype) + self.data_mean.to(x.dtype)
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=images.shape[-1] > self.size)
        return (images - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x, is_feat=False, preact=False):
        return self.teacher(self.adapt(x), is_feat=is_feat, preact=preact)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "teacher":
                raise
            return getattr(self.teacher, name)
