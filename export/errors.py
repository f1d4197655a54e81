"""Export failures a user can act on: one line, exit code 2 on the command line."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export that cannot run or whose result cannot be trusted; the message is one line."""


class ParityError(ExportError):
    """An exported component disagrees with torch beyond its precision's tolerance."""
