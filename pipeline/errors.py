"""Typed errors of the library. The CLI turns each into a one-line message (exit 1).

Every message says what is wrong and how to fix it; where a file is involved it starts with
``path:line:`` so editors and terminals can jump to it.
"""
from __future__ import annotations


class MnerError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class DataFormatError(MnerError):
    """A data file that does not follow its format (UMT CoNLL, R-GCN lists, captions)."""

    def __init__(self, path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {problem}")


class UnsafeItemId(MnerError):
    """An item id that would resolve outside the image directory."""


class MissingInput(MnerError):
    """A file or folder the stage needs is not there."""


class CacheMismatch(MnerError):
    """An artefact exists but was made by another configuration or from other inputs."""


class UnknownEncoder(MnerError):
    """An encoder name that is neither registered nor a local path."""


class SpaceMismatch(MnerError):
    """Vectors from two different embedding spaces were about to be compared."""


class InvalidConfig(MnerError):
    """A configuration value or combination that cannot work (bad config.json, bad flag)."""


class CorruptInput(MnerError):
    """A file is there but its content is not what it should be (checksum, size, format)."""
