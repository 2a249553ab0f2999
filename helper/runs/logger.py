"""Run logging: one logger ("kd") to the terminal and to a `train.log` in each run folder; TensorBoard
(torch.utils.tensorboard) plus a JSON-lines file of per-epoch scalars."""
import json
import logging
import os
import time

log = logging.getLogger("kd")


def setup_console_logging():
    """Plain one-line messages on stderr for the entry points (train.log adds timestamps)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


class _RunFilter(logging.Filter):
    """Passes the process's shared lines and the lines of one run (records tagged with another run's label are not)."""

    def __init__(self, label):
        super().__init__()
        self.label = label

    def filter(self, record):
        return getattr(record, "run", self.label) == self.label


def attach_run_log(folder, label=""):
    """Copy the "kd" logger's lines to <folder>/train.log (appending); returns the handler (remove it at the end)."""
    handler = logging.FileHandler(os.path.join(folder, "train.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_RunFilter(label))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def detach_run_log(handler):
    log.removeHandler(handler)
    handler.close()


class RunLogger:
    """Writes scalars to `<folder>/log.jsonl` and, if tensorboard is installed, to TensorBoard in `tb_folder`.

    purge_step: on resume, the first epoch to write again; TensorBoard hides the events of the interrupted run from
    that step on, so no step appears twice.
    """

    def __init__(self, folder, tb_folder=None, enabled=True, purge_step=None):
        self.enabled = enabled
        self.path = os.path.join(folder, "log.jsonl") if folder is not None else None
        self.writer = None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed; logging to %s only", self.path)
        else:
            self.writer = SummaryWriter(log_dir=tb_folder or folder, purge_step=purge_step)

    def log(self, step, scalars, kind="epoch"):
        """Record `scalars` (name -> number) at `step` (the epoch)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = "" if kind == "epoch" else f"{kind}/"
            for name, value in scalars.items():
                self.writer.add_scalar(prefix + name, float(value), step)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
