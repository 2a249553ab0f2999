"""train_teacher.py / train_student.py that kill (or stop) themselves at a chosen point, for the kill tests.

    python tests/kill_worker.py teacher|student ARGS...

Environment:
  KD_TEST_KILL    where, as <point>@<n>:
                  step@N        just before the N-th optimizer step of this process (mid-epoch)
                  last@E        inside the atomic write of <arch>_last.pth of epoch E
                  best@E        inside the copy to <arch>_best.pth of epoch E
                  ckpt_epoch@E  inside the copy to ckpt_epoch_E.pth
                  Inside a write, the process dies after half of the temporary file is on disk.
  KD_TEST_SIGNAL  KILL (default: SIGKILL, nothing runs after it) or STOP (SIGSTOP: the process stays, holding its
                  lock and files, until the test sends SIGCONT or SIGKILL)
Without KD_TEST_KILL the script runs as usual.
"""
import io
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_point(text):
    """'best@2' -> ('best', 2)."""
    point, _, number = text.partition("@")
    if point not in ("step", "last", "best", "ckpt_epoch") or not number.isdigit():
        raise SystemExit(f"KD_TEST_KILL={text!r}: expected step@N, last@E, best@E or ckpt_epoch@E")
    return point, int(number)


def die():
    sig = signal.SIGSTOP if os.environ.get("KD_TEST_SIGNAL", "KILL") == "STOP" else signal.SIGKILL
    os.kill(os.getpid(), sig)


def kind_of(path):
    """Which file of an epoch a checkpoint write targets: last, best, ckpt_epoch, or None."""
    name = os.path.basename(path)
    if name.endswith("_last.pth"):
        return "last"
    if name.endswith("_best.pth"):
        return "best"
    if name.startswith("ckpt_epoch_"):
        return "ckpt_epoch"
    return None


def stop_before_step(number):
    """An optimizer pre-step hook for every optimizer: die before the `number`-th step."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    steps = [0]

    def hook(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == number:
            die()

    register_optimizer_step_pre_hook(hook)


def stop_inside_write(point, epoch):
    """Wrap helper.files._write_atomic (behind save_atomic and copy_atomic): die half-way through the temporary
    file of the write of `point` (last/best/ckpt_epoch) whose checkpoint holds `epoch`."""
    import torch
    from helper.runs import files
    real_write_atomic = files._write_atomic

    def write_atomic(path, write):
        if kind_of(path) != point:
            return real_write_atomic(path, write)
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if ckpt.get("epoch") != epoch:
            return real_write_atomic(path, lambda f: f.write(data))

        def half_then_die(f):
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()
            f.write(data[len(data) // 2:])  # reached only after SIGSTOP and SIGCONT
        return real_write_atomic(path, half_then_die)

    files._write_atomic = write_atomic


def main():
    kind, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("KD_TEST_KILL"):
        point, number = parse_point(os.environ["KD_TEST_KILL"])
        if point == "step":
            stop_before_step(number)
        else:
            stop_inside_write(point, number)
    import train_student
    import train_teacher
    from helper.options import run_cli
    script = {"teacher": train_teacher, "student": train_student}[kind]
    run_cli(lambda: script.main(argv))


if __name__ == "__main__":
    main()
