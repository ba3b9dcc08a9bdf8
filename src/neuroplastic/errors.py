"""One exception type for every user-facing failure, so the CLI can print it without a traceback."""


class NeuroplasticError(Exception):
    """Bad input or an unrecoverable run state, with a message that says what to do."""
