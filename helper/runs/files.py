"""Files that survive kills: atomic writes (temporary file, then rename), checkpoint reading with one-line errors,
strict weight loading, and the sha256 of a file."""
import argparse
import hashlib
import logging
import os
import pickle
import shutil
import tempfile

import torch

from helper.errors import UserError


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    _write_atomic(path, lambda f: torch.save(obj, f))


def copy_atomic(src, path):
    """Copy a written checkpoint to `path` the same atomic way (no second serialisation)."""
    with open(src, "rb") as source:
        _write_atomic(path, lambda f: shutil.copyfileobj(source, f))


def write_text_atomic(path, text):
    """Write `text` (UTF-8) the same atomic way: the file holds the old text or the new, never part of one."""
    _write_atomic(path, lambda f: f.write(text.encode()))


def _write_atomic(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from lab-mates: as open() does
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# Classes a checkpoint may hold besides tensors and plain values: RepDistiller's *_last.pth record the run's options
# as an argparse.Namespace ({'opt': Namespace(...), 'model': ..., 'optimizer': ...}). Rebuilt by torch.load's
# weights-only unpickler, which sets their attributes and runs no code of theirs.
SAFE_GLOBALS = (argparse.Namespace,)


def load_checkpoint(path):
    """Load a checkpoint file with weights_only=True (tensors, plain values and SAFE_GLOBALS), with a one-line error if
    it is missing, unreadable or holds any other Python object."""
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a directory; give the .pth file inside it (e.g. <arch>_best.pth)")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); was its write interrupted?")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        foreign = foreign_globals(path)
        if foreign:
            raise UserError(f"{path} is not a checkpoint this tool can load safely: besides tensors and plain values "
                            f"it holds {', '.join(foreign)}, Python objects it does not unpickle (unpickling runs "
                            "their code); save the weights as {'model': model.state_dict()} (argparse.Namespace "
                            "options are fine)") from None
        raise UserError(f"{path} is not a checkpoint this tool can load safely ({unreadable_reason(e)}): it is "
                        "damaged, not written by torch.save, or holds objects other than tensors and plain "
                        "values") from None


def foreign_globals(path):
    """The Python globals a torch.save file names that weights-only loading refuses ('posix.system',
    '__main__.MyConfig'), read from its pickle's opcodes without running them; [] when it names none or cannot be
    read."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - damaged or not a torch.save zip file: the caller's other message says so
        return []
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in SAFE_GLOBALS}
    return [name for name in names if name not in allowed]


def unreadable_reason(error):
    """The cause of a failed torch.load(weights_only=True) in a few words, without torch's advice to load the file
    with weights_only=False (which would run whatever code a crafted file holds)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only" not in line and "Weights only load failed" not in line
              and not line.startswith(("Please file an issue", "Check the documentation"))]
    reason = useful[0].replace("WeightsUnpickler error: ", "").split(". ")[0].rstrip(".") if useful else ""
    if isinstance(error, pickle.UnpicklingError) and reason:
        return reason
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def extract_state_dict(ckpt):
    """The model weights of a RepDistiller-style `{'model': sd}` file, a torchvision file, or a raw state_dict."""
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise UserError("checkpoint holds no state_dict (expected {'model': state_dict} or a state_dict)")
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


def load_weights(model, state_dict, path, arch):
    """Load strictly; on mismatch, one line saying which keys are missing, unexpected or mis-shaped."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shaped:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if shaped:
            detail = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in shaped]
            parts.append(f"{len(shaped)} shape mismatches: {few(detail)}")
        raise UserError(f"checkpoint {path} does not match architecture {arch}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def write_output(path, flag, write):
    """write(path) after making its folder; a path that cannot be written is a one-line UserError naming `flag`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.exists(folder):  # a file there: open() says "Not a directory"
            os.makedirs(folder)
        write(path)
    except OSError as e:
        raise UserError(f"cannot write {flag} {path}: {e.strerror or e}") from None
    return path


log = logging.getLogger("kd")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask():
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
