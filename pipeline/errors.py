"""Typed errors of the library. Each carries what failed as fields; the CLI words the fix.

A library message says what is wrong in the library's own terms: it never names a command-line
flag or a CLI command. What would fix it travels as fields the CLI turns into its own words:

- ``path`` / ``line``: the file (and 1-based line) at fault; ``str(err)`` starts with
  ``path:line:`` so editors and terminals can jump to it;
- ``stage``: the stage that raised it (``extract``, ``build-graphs``, ``train``, ``evaluate``,
  ``predict``, ``stats``);
- ``value``: the offending value (a tag, an id, a name), when there is one;
- ``rerun``: the stage whose output is missing or stale and must be (re)made, e.g. ``extract``;
- ``setting``: the config field (a dataclass field name such as ``overwrite``, ``image_dir``,
  ``pool``) whose value would fix it; the CLI maps it to its option;
- ``hint``: a fix in plain words that needs no flag ("re-encode the file as UTF-8").

``str(err)`` is a complete, flag-free sentence for Python users; ``cli.describe_error`` words the
same error for the command line.
"""
from __future__ import annotations

import os
from pathlib import Path


class MnerError(Exception):
    """Base class: an expected failure, with a message meant for the user."""

    def __init__(self, problem: str, *, path=None, line: int | None = None,
                 stage: str | None = None, value=None, rerun: str | None = None,
                 setting: str | None = None, hint: str | None = None):
        self.problem, self.path, self.line = problem, None if path is None else str(path), line
        self.stage, self.value, self.rerun = stage, value, rerun
        self.setting, self.hint = setting, hint
        super().__init__(self.message())

    @property
    def where(self) -> str:
        """``path:line``, ``path`` or "" (what the message starts with)."""
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line else self.path

    def message(self) -> str:
        """The flag-free sentence: where, what is wrong, and the fix in library terms."""
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        fixes = []
        if self.hint:   # the setting that carries out the hint, in brackets
            alone = self.setting and not self.rerun
            fixes.append(f"{self.hint} ({self.setting})" if alone else self.hint)
        if self.rerun:
            fixes.append(f"run the {self.rerun} stage again"
                         + (f" or set {self.setting}" if self.setting else ""))
        elif self.setting and not self.hint:
            fixes.append(f"set {self.setting}")
        return "; ".join([text, *fixes])


class DataFormatError(MnerError):
    """A data file that does not follow its format (UMT CoNLL, JSON lines, R-GCN lists, captions)."""

    def __init__(self, path, line: int | None, problem: str, **fields):
        super().__init__(problem, path=path, line=line, **fields)


class UnsafeItemId(MnerError):
    """An item id that would resolve outside the image directory."""


class MissingInput(MnerError):
    """A file or folder the stage needs is not there."""


class CacheMismatch(MnerError):
    """An artefact exists but was made by another configuration or from other inputs."""


class StaleArtifact(CacheMismatch):
    """An artefact whose recorded input fingerprint no longer matches that input's content.

    ``input`` names the input that changed (``train.txt``, ``captions``, ``images``, ``features:
    text``, ...); ``rerun`` the stage that remakes the artefact.
    """

    def __init__(self, problem: str, *, input: str, **fields):
        self.input = input
        super().__init__(problem, **fields)


class UnknownEncoder(MnerError):
    """An encoder name that is neither registered nor a local path nor a known hub form."""


class SpaceMismatch(MnerError):
    """Vectors from two different embedding spaces were about to be compared."""


class InvalidConfig(MnerError):
    """A configuration value or combination that cannot work (bad config.json, bad setting)."""


class CorruptInput(MnerError):
    """A file is there but its content is not what it should be (checksum, size, format)."""


class OutputError(MnerError):
    """An output path that cannot be written (missing folder, a directory, no permission)."""


def writable_file(path, **fields) -> Path:
    """``path`` as a ``Path`` when a file can be written there (before any work is done), else
    an ``OutputError``: it is a folder, its folder is missing or is a file, or it is read-only.
    ``fields`` (``setting``, ``stage``...) travel with the error."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a folder; give a file name", path=path, **fields)
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write here: the folder {parent} {what}", path=path, **fields)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError("cannot write here: permission denied", path=path, **fields)
    return path


def writable_folder(path, **fields) -> Path:
    """``path`` as a ``Path`` when it is a folder that can be written, or can be created (the
    nearest existing folder above it is writable); else an ``OutputError``."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is)"
        raise OutputError(f"is not a folder: a file is in the way{where}", path=path, **fields)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write here: permission denied on {existing}", path=path,
                          **fields)
    return path
