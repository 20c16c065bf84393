"""Output folders of the command line: checked before any work, written all-or-nothing.

A command names the stems of what it writes (``city`` for ``city.ply``, ``city.ply.geo.json``
and the hidden temporary files of an interrupted write, ``frames`` for the frames folder).
:func:`check_output_folder` refuses, at once, a folder that cannot be written or that holds
anything else (a user's files are never replaced); :func:`writing` then gives an empty temporary
folder beside it that replaces it as a whole when the command succeeds
(``export.atomic_folders``). So a failed or killed run leaves the previous outputs as they were,
a rerun with fewer frames or formats leaves none of the old ones beside the new, and what a
killed run left behind goes with the next run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..export.atomic import atomic_folders
from .errors import OutputNotWritableError

__all__ = ["check_output_folder", "published", "writing"]


def _stem(name: str) -> str:
    return name.lstrip(".").split(".")[0]


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: the one proof that it can be written."""
    fd, probe = tempfile.mkstemp(prefix=".diffusers-city-probe.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_output_folder(path: Path, stems: Collection[str], option: str = "--out") -> Path:
    """``path`` when the command may write its outputs there: ``ValueError`` for a file in the way
    or a folder holding entries whose stem is not in ``stems``, ``OutputNotWritableError`` when
    neither ``path`` nor the folder it is created in can be written. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a folder")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if _stem(p.name) not in stems)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(
                f"{option} {path} holds files this command does not write ({shown}); "
                "the folder is replaced as a whole, so choose a new or empty folder"
            )
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        for folder in (path, parent) if path.is_dir() else (parent,):
            _probe(folder)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputNotWritableError(f"{option} {path} is not writable: {reason}") from None
    return path


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """An empty temporary folder to write the outputs into; it replaces ``path`` as a whole when
    the block succeeds and is removed when it fails. A permission error while writing is an
    ``OutputNotWritableError`` (the block only writes, so it is the output that cannot be written)."""
    try:
        with atomic_folders(path) as (tmp,):
            yield tmp
    except PermissionError as error:
        raise OutputNotWritableError(f"{path} could not be written: {error.strerror or error}") from error


def published(paths: list[Path], tmp: Path, final: Path) -> list[Path]:
    """``paths`` written under ``tmp``, as they are named once ``tmp`` has become ``final``."""
    return [final / Path(p).relative_to(tmp) for p in paths]
