"""Errors that reach the user as one line and exit status 2."""


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, never as a traceback."""


class DatasetError(UserError):
    """A malformed dataset folder; the message names the offending file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded safely or does not describe a SING model."""
