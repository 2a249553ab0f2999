"""The one exception type for mistakes a user can fix (bad flag, missing data, wrong checkpoint)."""


class UserError(Exception):
    """Raised for user mistakes; entry points print it as a single `error: ...` line and exit 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint. `logged`: its one
    line is already on the terminal and in train.log (the entry point prints nothing more)."""

    def __init__(self, message, logged=False):
        super().__init__(message)
        self.logged = logged


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; its message says which checkpoints are kept (helper.options.run_cli prints it)."""


class Preempted(Exception):
    """A stop signal (SIGUSR2 from the scheduler, SIGTERM) ended the run after a step checkpoint; `--resume` continues
    it. The entry point prints the message and exits with 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum
