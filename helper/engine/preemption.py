"""Stopping at a step. The scheduler's warning signal (SIGUSR2: submitit has SLURM send it before the time limit or
on preemption) and SIGTERM (scancel, kill) ask the run to finish the step it is in; the loop then has every trainee
write a step checkpoint (`<arch>_step.pth`: weights, optimizer, method state and memory banks, random streams, the
epoch's meters and the position in the epoch) and the process exits, so the job can be requeued; `--resume`
continues at the next step, bit-identical to the run that was not stopped (the epoch's data order and augmentations
are replayed by passing over the batches already trained). Under torchrun the ranks agree on the step (one
all-reduce of a flag per step)."""
import contextlib
import signal
import threading

import torch

from helper import collectives

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopRequest:
    """The first stop signal received, and whether every rank has agreed to stop (`requested`)."""

    def __init__(self, device="cpu"):
        self.signum = None
        self.device = torch.device(device)

    def handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def requested(self):
        """The signal number to stop for (agreed by every rank: the largest received), or None to go on."""
        local = self.signum or 0
        if collectives.is_distributed():
            flag = torch.tensor([local], dtype=torch.int64, device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            local = int(flag.item())
        return local or None


@contextlib.contextmanager
def stop_on_signals(device="cpu"):
    """A StopRequest that SIGUSR2 and SIGTERM set while the block runs (the earlier handlers come back after); in a
    thread other than the main one, where Python takes no signal handler, one that never stops."""
    request = StopRequest(device)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request.handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StepStop(Exception):
    """Raised by the loop when a stop was requested: the epoch, the next step to train, the epoch's seconds so far."""

    def __init__(self, epoch, next_step, seconds, signum):
        super().__init__(f"stop at epoch {epoch}, step {next_step}")
        self.epoch, self.next_step, self.seconds, self.signum = epoch, next_step, seconds, signum
