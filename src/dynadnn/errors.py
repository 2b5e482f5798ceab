"""One exception type for everything a user can fix.

The CLI prints a `UserError` as one line and exits non-zero; anything else is a bug and keeps its
traceback (shown with `--debug`)."""


class UserError(Exception):
    """A problem with the user's input (file, field, value) that the message explains in one line."""


class ArchError(UserError, ValueError):
    """An architecture that does not belong to a search space."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the preset."""
