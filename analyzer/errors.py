"""The project's exception types.

Expected bad input (a malformed line) is data, not an exception; these are for what stops a run.
Each message tells the user what to do next, and says whether retrying can help.
"""

from __future__ import annotations


class WslogError(Exception):
    """Base of every error wslog raises on purpose."""

    retryable: bool = False


class InputError(WslogError):
    """An input path cannot be read: missing, unreadable, not a file, bad gzip."""


class FormatError(WslogError):
    """A ``--log-format`` cannot be compiled into a parser."""


class MalformedEntryError(WslogError):
    """``--strict`` met a malformed entry."""


class SpillError(WslogError):
    """Connections past the memory budget cannot be written to the temporary directory."""
