"""The one exception type for mistakes a user can fix (bad flag, missing data, wrong checkpoint)."""


class UserError(Exception):
    """Raised for user mistakes; entry points print it as a single `error: ...` line and exit 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; its message says which checkpoints are kept (helper.options.run_cli prints it)."""
