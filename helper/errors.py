"""The one exception type for mistakes a user can fix (bad flag, missing data, wrong checkpoint)."""


class UserError(Exception):
    """Raised for user mistakes; entry points print it as a single `error: ...` line and exit 2."""
