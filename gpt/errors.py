"""The one error type that means "the user asked for something that cannot be done" (no torch, no Hydra).

Entry points print a ``UserError`` as one line and exit 1; any other exception is a bug and keeps its traceback.
It is a ``ValueError`` so callers that catch bad values keep working.
"""


class UserError(ValueError):
    """Bad input (a setting, a file, a prompt): the message says what is wrong and what to do instead."""
