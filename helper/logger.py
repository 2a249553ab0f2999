"""Run logging: TensorBoard (torch.utils.tensorboard) plus a JSON-lines file, one record per call."""
import json
import logging
import os
import time

log = logging.getLogger("kd")


def setup_console_logging():
    """Plain one-line messages on stderr for the entry points."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


class RunLogger:
    """Writes scalars to `<folder>/log.jsonl` and, if tensorboard is installed, to TensorBoard in `tb_folder`."""

    def __init__(self, folder, tb_folder=None, enabled=True):
        self.enabled = enabled
        self.path = os.path.join(folder, "log.jsonl")
        self.writer = None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; logging to %s only", self.path)
        else:
            self.writer = SummaryWriter(log_dir=tb_folder or folder)

    def log(self, step, scalars, kind="epoch"):
        """Record `scalars` (name -> number) at `step` (the epoch)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, float(value), step)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
