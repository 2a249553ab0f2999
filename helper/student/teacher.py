"""The frozen teacher of a student run: read from its checkpoint (or RepDistiller's folder-name fallback), checked and
loaded strictly."""
import logging
import os

import torch

from helper.errors import UserError
from helper.runs.files import extract_state_dict, load_checkpoint, load_weights
from helper.util import is_integer
from models import build_model, input_size, model_dict

log = logging.getLogger("kd")


# ---- the teacher ------------------------------------------------------------------------------------------------
def teacher_name_from_path(path):
    """RepDistiller's fallback for published checkpoints: the architecture is the run folder's prefix."""
    segments = os.path.basename(os.path.dirname(os.path.abspath(path))).split("_")
    if segments[0] == "wrn":
        return "_".join(segments[:3])
    return segments[0]


def teacher_arch(ckpt, path):
    """The architecture a teacher checkpoint records, or its folder's prefix when it records none."""
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if arch is None:
        arch = teacher_name_from_path(path)
        if arch not in model_dict:
            raise UserError(f"--path_t {path}: no 'arch' in the checkpoint and folder prefix {arch!r} is not a "
                            "model name; put it under save/models/<arch>_vanilla/")
    elif not isinstance(arch, str) or arch not in model_dict:
        raise UserError(f"--path_t {path} records arch {arch!r}, which is not a model name of this repository; "
                        "pass a checkpoint written by train_teacher.py or fix its 'arch' entry")
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


def load_teacher(path, num_classes, device):
    """Build the teacher named in the checkpoint (or its folder), load it strictly, freeze it -> (teacher, arch)."""
    ckpt = load_checkpoint(path)
    arch = teacher_arch(ckpt, path)
    check_teacher_classes(ckpt, path, num_classes)
    teacher = build_model(arch, num_classes)
    state_dict = extract_state_dict(ckpt)
    load_weights(teacher, state_dict, path, arch)
    check_finite_weights(state_dict, path)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.to(device), arch


def check_input_size(model_name, data):
    if input_size[model_name] != data.input_size:
        raise UserError(f"--model {model_name} expects {input_size[model_name]}px inputs but --dataset gives "
                        f"{data.input_size}px; pick a network for this dataset")
