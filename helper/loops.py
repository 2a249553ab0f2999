"""The shared epoch loop, where RepDistiller keeps it: `train_epoch` and `validate` live in helper/engine/loop.py."""
from helper.engine.loop import train_epoch, validate  # noqa: F401
