"""A run folder that survives kills, reruns and parallel runs.

- A lock (`.lock`, flock) is held by the writing process for the whole run: a second run on the same folder stops
  with one line naming the holder's PID. The kernel drops the lock when the holder dies, even by SIGKILL.
- A folder that already holds a run (checkpoints, log, results) is refused unless `--resume` (continue it) or
  `--overwrite` (delete that run's files first) is given.
- The run's own files (`results.json`, `log.jsonl`, `.lock`, ...) must be files: a directory in their place is a
  one-line UserError naming it.
- Temporaries of interrupted atomic writes (`.tmp-*`) are removed on start and resume, once every check has passed.
- A bare `--resume` in a folder where a run started but was stopped before its first checkpoint (options.json, no
  `*.pth`) starts that run at epoch 1 (nothing can be lost), dropping its log records (`discard_unsaved_epochs`).
- On resume, the epoch's set of files is made consistent with `<arch>_last.pth`: `log.jsonl` keeps each epoch
  once (records after the checkpoint's epoch are dropped), `<arch>_best.pth` and `ckpt_epoch_<N>.pth` are
  rewritten from `last` when a kill interrupted their copy (and results.json is written even when no epoch is
  left to run: helper.engine.trainee.Trainee.resume_from).
- A folder that cannot be made (a path under a file, no permission) is a one-line UserError naming the flag.
- The lines logged before the run folders exist (device, data, method, weights) are kept (`StartupLines`) and
  copied to the top of each run's train.log.
"""
import fcntl
import glob
import logging
import os

from helper.errors import UserError
from helper.runs.files import copy_atomic, load_checkpoint
from helper.runs.records import RECORD_FILES

log = logging.getLogger("kd")


TEMP_PREFIX = ".tmp-"


LOCK_NAME = ".lock"


RUN_FILES = ("*.pth", *RECORD_FILES, "train.log", "curves.png")  # every file a run writes in its folder


UNSAVED_FILES = ("log.jsonl", "results.json")  # what a run stopped before its first checkpoint leaves to drop


class StartupLines(logging.Handler):
    """The "kd" logger's lines from the start of a process until its run folders exist (device, data, method,
    weights), to copy into each run's train.log when it is attached."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def start(self):
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        log.addHandler(self)
        return self

    def stop(self):
        log.removeHandler(self)

    def copy_to(self, handler):
        """Write the kept lines through `handler` (a train.log handler: its filter keeps this run's lines)."""
        for record in self.records:
            handler.handle(record)


def make_folder(path, what, flag):
    """os.makedirs, with a one-line UserError naming `flag` when the path cannot be a writable folder."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror or e}; pick a writable {flag}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {what} {path}: permission denied; pick a writable {flag}")


class RunFolder:
    """The folder of one run, locked while this process writes into it."""

    def __init__(self, path):
        self.path = path
        self._lock = None
        self.created = []  # the folders this claim made (removed again when the run is refused before it starts)

    def acquire(self):
        """Create the folder and take its lock; a held lock is a one-line UserError naming the holder's PID. The lock
        file is removed when the run ends (release), so a lock taken on a file another run just removed is taken
        again on the file now at the path."""
        self.make(self.path, "run folder", "--model_path")
        self.check_files()
        lock_path = os.path.join(self.path, LOCK_NAME)
        while True:
            handle = open(lock_path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise UserError(f"run folder {self.path} is in use by another run (PID {holder}); wait for it to "
                                "end, or name another folder (--tag, --trial)") from None
            if os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
            handle.close()  # the file was removed by the run that held it: lock the one at the path now
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        return self

    def claim(self, tb_folder, resume, overwrite):
        """Lock the folder, make the TensorBoard folder and check what an earlier run left there (resume, overwrite);
        returns self. Writes nothing else: the caller removes stale temporaries once its own checks have passed."""
        self.acquire()
        self.make(tb_folder, "TensorBoard folder", "--tb_path")
        self.check_start(resume, overwrite)
        return self

    def check_files(self):
        """The run's own files must be files (or absent): one line naming the first that is a directory."""
        names = [pattern for pattern in RUN_FILES if "*" not in pattern] + [LOCK_NAME]
        paths = [os.path.join(self.path, name) for name in names] + glob.glob(os.path.join(self.path, "*.pth"))
        for path in paths:
            if os.path.isdir(path):
                raise UserError(f"{path} is a directory, but the run writes a file there; move or remove it, or "
                                "pick another folder with --trial")

    def make(self, path, what, flag):
        if not os.path.isdir(path):
            self.created.append(path)
        make_folder(path, what, flag)

    def release(self, started=True):
        """Remove the lock file and unlock; for a run that never started (refused after the claim), also remove the
        folders the claim made when they hold nothing else."""
        if self._lock is not None:
            lock_path = os.path.join(self.path, LOCK_NAME)
            if os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(self._lock.fileno()).st_ino:
                os.remove(lock_path)  # still locked: a run that opened it meanwhile retries on a new file
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if started:
            return
        for path in reversed(self.created):
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)

    def previous_run(self):
        """'finished', 'partial' or None: what an earlier run left in the folder."""
        if os.path.exists(os.path.join(self.path, "results.json")):
            return "finished"
        for pattern in ("*.pth", "log.jsonl"):
            if glob.glob(os.path.join(self.path, pattern)):
                return "partial"
        return None

    def check_free(self, resume, overwrite):
        """Refuse to start over an earlier run unless resume/overwrite (writes nothing: --dry_run calls it)."""
        previous = self.previous_run()
        if previous is not None and not resume and not overwrite:
            raise UserError(f"run folder {self.path} already holds a {previous} run; pass --resume to continue it, "
                            "--overwrite to delete it and start over, or name another folder (--tag, --trial)")
        return previous

    def check_start(self, resume, overwrite):
        """Refuse to start over an earlier run unless resume/overwrite; with overwrite, delete its files."""
        if self.check_free(resume, overwrite) is None or resume:
            return
        for pattern in RUN_FILES:
            for path in glob.glob(os.path.join(self.path, pattern)):
                os.remove(path)
        log.info("--overwrite: removed the earlier run's files from %s", self.path)

    def remove_temporaries(self):
        """Delete leftovers of interrupted atomic writes (this process holds the lock: none is in progress)."""
        for path in glob.glob(os.path.join(self.path, TEMP_PREFIX + "*")):
            os.remove(path)
            log.info("removed %s, left by an interrupted write", path)


def resumable_checkpoints(folder):
    """The checkpoints of `folder` a run can resume from (an init stage's <arch>_init.pth is not one)."""
    return sorted(p for p in glob.glob(os.path.join(folder, "*.pth")) if not p.endswith("_init.pth"))


def started_without_checkpoint(folder):
    """True when a run started in `folder` (its options.json) but wrote no checkpoint to resume from."""
    return os.path.isfile(os.path.join(folder, "options.json")) and not resumable_checkpoints(folder)


def discard_unsaved_epochs(folder):
    """Drop what a run stopped before its first checkpoint left (its log records, a failed results.json), so that
    the run started over does not log epoch 1 twice."""
    for name in UNSAVED_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
            log.info("removed %s: no checkpoint holds its epochs", path)


def repair_after_kill(folder, arch, ckpt, save_freq):
    """Make best/ckpt_epoch files agree with the resumed checkpoint `ckpt` (the contents of <arch>_last.pth)."""
    last = os.path.join(folder, f"{arch}_last.pth")
    epoch, best_epoch = ckpt["epoch"], ckpt.get("best_epoch", 0)
    if saved_epoch(last) != epoch:
        return  # resumed from an older checkpoint: the epochs replayed rewrite their own files
    targets = []
    if best_epoch == epoch:
        targets.append(os.path.join(folder, f"{arch}_best.pth"))
    if save_freq > 0 and epoch % save_freq == 0:
        targets.append(os.path.join(folder, f"ckpt_epoch_{epoch}.pth"))
    for path in targets:
        if saved_epoch(path) == epoch:
            continue
        copy_atomic(last, path)
        log.info("resume: rewrote %s from %s (its copy was interrupted)", os.path.basename(path),
                 os.path.basename(last))


def saved_epoch(path):
    """The epoch of the checkpoint at `path`, or None when there is none (or it cannot be read)."""
    if not os.path.isfile(path):
        return None
    try:
        return load_checkpoint(path).get("epoch")
    except UserError:
        return None
