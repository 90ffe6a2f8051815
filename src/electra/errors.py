"""The one exception type that the command line reports as a plain message instead of a traceback."""


class UserError(Exception):
    """Bad input or settings the user can fix: the message says what was wrong, where, and what to do."""
