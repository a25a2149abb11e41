"""Errors that reach the user as one line and exit status 2."""
import importlib


class UserError(Exception):
    """Bad input from the user: printed as one line by the CLI, never as a traceback."""


class DatasetError(UserError):
    """A malformed dataset folder; the message names the offending file."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded safely or does not describe a SING model."""


def import_or_error(module: str, message: str):
    """Imports an optional module (one that also needs a system library), or raises UserError with
    ``message``, whose ``{reason}`` becomes the import error on one line."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        raise UserError(message.format(reason=" ".join(str(exc).split()))) from None
