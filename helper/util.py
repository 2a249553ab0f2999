"""Small helpers any layer may use (they import nothing of the project but helper.errors): seeding, the device,
options as plain types, whole numbers."""
import logging
import random

import numpy as np
import torch

from helper.errors import UserError


def set_seed(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name):
    """'auto' -> cuda if available else cpu; otherwise validate the name with a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (use cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return device


def plain_options(opt):
    """The options as plain JSON types, safe for torch.load(weights_only=True)."""
    def plain(v):
        if isinstance(v, (bool, int, float, str)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in sorted(vars(opt).items())}


def is_integer(value):
    """A JSON/pickle value that is a whole number (True and False are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


class RunLog(logging.LoggerAdapter):
    """The "kd" logger for one run of a group: lines prefixed with the run's label and tagged for its train.log."""

    def __init__(self, label):
        super().__init__(logging.getLogger("kd"), {"run": label})
        self.label = label

    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {}).update(self.extra)
        return (f"[{self.label}] {msg}" if self.label else msg), kwargs


SHORT_FLAGS = {"gamma": "-r", "alpha": "-a", "beta": "-b"}  # RepDistiller's spellings of the loss weights


def flag_text(dest, value):
    """An option as on a command line: "-r 1", "--nce_k 500", "--lr_decay_epochs 150,180", "--dot", "no --dot",
    "--kd_T unset"."""
    flag = SHORT_FLAGS.get(dest, f"--{dest}")
    if value is True:
        return flag
    if value is False:
        return f"no {flag}"
    if value is None:
        return f"{flag} unset"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{flag} {value}"


def check_at_least(args, bounds):
    """One line for the first flag of `bounds` ((dest, lowest allowed value), ...) below its bound; None passes."""
    for flag, low in bounds:
        value = getattr(args, flag)
        if value is not None and value < low:
            raise UserError(f"--{flag} must be at least {low}, got {value}")
