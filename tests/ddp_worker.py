"""train_teacher.py / train_student.py under torchrun with test-only hooks, for tests/test_ddp.py.

    python -m torch.distributed.run --nproc_per_node=N --standalone tests/ddp_worker.py teacher|student ARGS...

Environment (all optional):
  KD_TEST_OUT        folder for rank<r>.pt (the final state_dict of the model, of every trained module and of
                     the CTKD temperature on this rank, for the first trainee and, under "runs", for every trainee
                     of a group) and writes_rank<r>.json (what this rank wrote under KD_TEST_WATCH)
  KD_TEST_WATCH      folder whose file-system writes are recorded (Python audit events: open for writing,
                     rename/replace, mkdir, remove)
  KD_TEST_BN_EVAL=1  BatchNorm layers never enter train mode (they normalise with their running statistics),
                     so a sample's output does not depend on which other samples share its batch
  KD_TEST_NO_AUGMENT=1  the training transform is the test transform (no random crop or flip), on both loaders
  KD_TEST_SIGNAL_AFTER=N  rank 0 sends itself SIGUSR2 after its N-th training step (a scheduler's stop signal)
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes = []
recording = [True]


def watch_writes(root):
    """Record every write-like file-system event under `root` in `writes`."""
    root = os.path.abspath(root)

    def under_root(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return isinstance(path, str) and os.path.abspath(path).startswith(root)

    def hook(event, args):
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and under_root(path):
                writes.append(["open", os.fsdecode(path)])
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
            paths = [a for a in args if isinstance(a, (str, bytes))]
            if any(under_root(p) for p in paths):
                writes.append([event] + [os.fsdecode(p) for p in paths])

    sys.addaudithook(hook)


def signal_after_steps(n):
    """Rank 0 sends itself SIGUSR2 after its n-th training step (the other ranks learn it from the stop vote)."""
    import signal

    from helper.engine.trainee import Trainee
    real_step, done = Trainee.step, [0]

    def step(self, *args):
        real_step(self, *args)
        done[0] += 1
        if done[0] == n:
            os.kill(os.getpid(), signal.SIGUSR2)
    Trainee.step = step


def main():
    kind, argv = sys.argv[1], sys.argv[2:]
    out = os.environ.get("KD_TEST_OUT")
    if os.environ.get("KD_TEST_WATCH"):
        watch_writes(os.environ["KD_TEST_WATCH"])

    import torch
    if os.environ.get("KD_TEST_BN_EVAL") == "1":
        from torch.nn.modules.batchnorm import _BatchNorm
        _BatchNorm.train = lambda self, mode=True: torch.nn.Module.train(self, False)
    if os.environ.get("KD_TEST_NO_AUGMENT") == "1":
        from dataset import cifar100
        from dataset.gpu_loader import GpuResidentLoader
        cifar100.train_transform = cifar100.test_transform

        def centre(self, index, generator):  # the device-resident loader's crop at offset (pad, pad), no flip
            return self.images[index][:, :, self.pad:self.pad + self.height, self.pad:self.pad + self.width]
        GpuResidentLoader._augmented = centre

    if os.environ.get("KD_TEST_SIGNAL_AFTER") and os.environ.get("RANK", "0") == "0":
        signal_after_steps(int(os.environ["KD_TEST_SIGNAL_AFTER"]))
    import train_student
    import train_teacher
    from helper.engine import trainee as run_module
    from helper.options import run_cli
    script = {"teacher": train_teacher, "student": train_student}[kind]
    trained = []
    original_finish = run_module.Trainee.finish

    def finish(self):  # the main stage's trainees (InitTrainee has its own finish)
        extra = self.extra_state()  # called on every rank: it may hold collectives
        trained.append({"model": self.model.state_dict(), "modules": [m.state_dict() for m in self.train_modules],
                        "temperature": extra.get("temperature"), "label": self.label})
        original_finish(self)

    run_module.Trainee.finish = finish

    def run():
        script.main(argv)
        recording[0] = False
        if out:
            rank = int(os.environ.get("RANK", "0"))
            state = dict(trained[0], runs=trained)
            torch.save(state, os.path.join(out, f"rank{rank}.pt"))
            with open(os.path.join(out, f"writes_rank{rank}.json"), "w") as f:
                json.dump(writes, f)

    run_cli(run)


if __name__ == "__main__":
    main()
