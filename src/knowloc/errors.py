"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class KnowlocError(Exception):
    """Bad input or an impossible request; the message names the problem in one line."""

    exit_code = 2
