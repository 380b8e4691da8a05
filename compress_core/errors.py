"""Errors a user can fix.

Anything raised as :class:`UserError` (a ``ValueError``) is turned by the command
line entry points into a one-line message on stderr and exit status 2, before
anything in the work directory is written.
"""


class UserError(ValueError):
    """Bad input from the user: a config value, a path, a checkpoint, a flag.

    The message must be one line and name the offending value.
    """


def check(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
