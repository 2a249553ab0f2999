"""What a trainee records, written into its run folder: epoch scalars (log.jsonl and TensorBoard), checkpoints
(`<arch>_last.pth` atomically, then its copies `_best` and `ckpt_epoch_N`), `<arch>_init.pth`, results.json; and,
on resume, the folder made consistent with the checkpoint continued from. Only the main process writes."""
import os

from helper.runs.files import copy_atomic, save_atomic
from helper.runs.folder import discard_unsaved_epochs, repair_after_kill
from helper.runs.logger import RunLogger
from helper.runs.records import truncate_log, write_options, write_results
from helper.util import plain_options


class RunRecord:
    """The record of one run in `folder`: every checkpoint it writes says which `script` wrote it; `protocol` is
    what results.json records."""

    def __init__(self, folder, tb_folder, *, arch, script, save_freq, protocol, enabled=True, purge_step=None):
        self.folder, self.arch, self.script = folder, arch, script
        self.save_freq, self.protocol = save_freq, protocol
        self.logger = RunLogger(folder, tb_folder, enabled=enabled, purge_step=purge_step)

    def log(self, epoch, scalars, kind="epoch"):
        self.logger.log(epoch, scalars, kind=kind)

    def save_last(self, ckpt):
        """<arch>_last.pth, atomically: what a resume continues from (a step checkpoint of that epoch is then
        dropped)."""
        save_atomic({**ckpt, "script": self.script}, self.path(f"{self.arch}_last.pth"))
        if os.path.exists(self.path(f"{self.arch}_step.pth")):
            os.remove(self.path(f"{self.arch}_step.pth"))

    def save_step(self, ckpt):
        """<arch>_step.pth, atomically: the run stopped in the middle of an epoch (helper.engine.preemption)."""
        save_atomic({**ckpt, "script": self.script}, self.path(f"{self.arch}_step.pth"))

    def copy_last(self, epoch, is_best):
        """Copies of <arch>_last.pth to _best and ckpt_epoch_N (redone on resume when a kill cut them)."""
        last = self.path(f"{self.arch}_last.pth")
        if is_best:
            copy_atomic(last, self.path(f"{self.arch}_best.pth"))
        if epoch % self.save_freq == 0:
            copy_atomic(last, self.path(f"ckpt_epoch_{epoch}.pth"))

    def save_init(self, ckpt):
        save_atomic({**ckpt, "script": self.script}, self.path(f"{self.arch}_init.pth"))

    def resumed(self, ckpt):
        """Make the folder consistent with the checkpoint resumed from: redo its interrupted copies, drop the log
        records of later epochs."""
        repair_after_kill(self.folder, self.arch, ckpt, self.save_freq)
        truncate_log(self.folder, ckpt["epoch"])

    def results(self, results):
        write_results(self.folder, {**results, "protocol": self.protocol})

    def close(self):
        self.logger.close()

    def path(self, name):
        return os.path.join(self.folder, name)


def start_writing(run_folder, opt, ckpt):
    """The first writes of a run (main process), once every check has passed: stale temporaries removed, the epochs
    of a run that --resume starts over dropped, the full options as JSON next to the checkpoints."""
    run_folder.remove_temporaries()
    if opt.resume and ckpt is None:
        discard_unsaved_epochs(run_folder.path)
    write_options(run_folder.path, plain_options(opt))


def purge_step(opt, ckpt):
    """The first epoch TensorBoard writes again: the one after the resumed checkpoint's, or 1 when --resume starts
    the run over (None for a new run)."""
    if ckpt is not None:
        return ckpt["epoch"] + 1
    return 1 if opt.resume else None
