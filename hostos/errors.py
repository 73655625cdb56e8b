"""Expected failures of hostos verbs: printed as one line, no traceback."""


class HostosError(Exception):
    """An expected failure; its message says what went wrong and what to do next."""
