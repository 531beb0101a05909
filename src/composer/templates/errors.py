"""The errors of the template language: a template line's, and a path that leaves its root."""

from __future__ import annotations

from composer.run import ComposerError


class TemplateError(ComposerError):
    """An error in or from a template line: '<file>:<line>: <message>'."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        self.filename = filename
        self.line = line
        self.message = message
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {message}")


class PathEscapeError(ComposerError):
    """A path that would leave the tree."""
