"""The one exception type for bad input. The CLI prints its message on one line and exits with code 2."""


class BiasbenchError(ValueError):
    """Bad input or bad files: the message names the bad value and what is allowed or expected."""
