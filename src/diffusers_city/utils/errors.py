"""Error types shared by the readers, the loaders and the command line."""

from __future__ import annotations


class CorruptFileError(ValueError):
    """A file is truncated, damaged or not what its name or header claims (a ``ValueError``, so
    callers catching bad input catch it too; the CLI exits with its own status for it)."""
