"""The errors a user can cause, one type per kind of input, imported by any layer.

Each message says what is wrong and what to do; the CLI turns every one of them into one
``sspu: error: ...`` line (exit status 2) and the node into one throttled warning
(:data:`USER_ERRORS`), never a traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A command-line input the user has to fix."""


class ConfigError(ValueError):
    """A parameter file or value is invalid; the message names the parameter, the value
    and what is allowed."""


class CloudFileError(ValueError):
    """A point-cloud or mesh file is unreadable, malformed or of an unsupported kind.

    The message always starts with the file path, then says what is wrong, e.g.
    ``'scan.ply: vertex property "x" missing'``.
    """


class PointCloudFormatError(ValueError):
    """The one exception for malformed clouds; message names what is wrong (field name, value,
    expected)."""


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says which and what exists."""


#: Every error caused by bad user input (files, parameters, models, messages).
USER_ERRORS: tuple[type[Exception], ...] = (UsageError, ConfigError, CloudFileError,
                                            PointCloudFormatError, ModelError)
