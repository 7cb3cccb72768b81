"""The progress callback the library accepts; the CLI passes a tqdm bar factory.

A progress factory is called as ``progress(total=..., desc=...)`` and returns a context manager
with ``update(n)``: exactly tqdm's interface, without the library importing tqdm.
"""
from __future__ import annotations


class NullBar:
    """A bar that shows nothing (quiet runs and library use)."""

    def __init__(self, total=None, desc=None, **_ignored):
        self.total, self.desc, self.n = total, desc, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def no_progress(total=None, desc=None, **kwargs) -> NullBar:
    return NullBar(total, desc)
