"""Atomic file writes and georeference side files shared by every writer.

Every writer renders into a temporary file in the destination folder and renames it into place
with ``os.replace``, so a failure (bad input found late, a full disk, an interrupt) never leaves
a half-written file, and an existing file is replaced only by a complete one. Multi-file outputs
(a pipeline folder, a set of frames) are written the same way as whole folders (``atomic_folders``),
and what an interrupted write of ours left behind is recognised by its name (``remove_stale_partials``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_folders",
    "atomic_write",
    "crs_to_wkt",
    "remove_stale_partials",
    "resolve_offset",
    "write_georef_sidecar",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

# Coordinates beyond this magnitude (metres) lose precision as float32 (ulp >= 1 mm at 16 km).
_FLOAT32_SAFE = 1.0e4
_WKT_ROOTS = (
    "PROJCS",
    "GEOGCS",
    "GEOCCS",
    "COMPD_CS",
    "PROJCRS",
    "GEOGCRS",
    "GEODCRS",
    "COMPOUNDCRS",
    "BOUNDCRS",
    "VERTCRS",
    "VERT_CS",
)


def check_destination(path: str | os.PathLike) -> Path:
    """The destination as a ``Path``; its folder must exist and it must not be a folder."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"output path {path} is a folder")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so format detection by extension
    works) and move it onto ``path`` when the block succeeds; on any error remove it."""
    path = check_destination(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_write``; returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def resolve_offset(points: np.ndarray, offset: Sequence[float] | None) -> np.ndarray:
    """The offset subtracted before storing coordinates as float32.

    ``None`` picks zero when every coordinate is within +-10 km, else the floor of the minimum
    corner (whole metres), so georeferenced scenes (UTM, state plane) keep millimetre precision.
    """
    if offset is not None:
        off = np.asarray(offset, dtype=np.float64).reshape(-1)
        if off.shape != (3,) or not np.isfinite(off).all():
            raise ValueError(f"offset must be 3 finite numbers, got {offset!r}")
        return off
    if len(points) == 0 or np.abs(points).max() < _FLOAT32_SAFE:
        return np.zeros(3)
    return np.floor(points.min(0).astype(np.float64))


def crs_to_wkt(crs: str | None) -> str | None:
    """WKT for a CRS string: WKT is returned as is (one line); other forms (``"EPSG:32633"``)
    are converted with rasterio when it is installed, else ``None``."""
    if not crs:
        return None
    text = " ".join(crs.split())
    if text.upper().startswith(_WKT_ROOTS):
        return text
    try:
        from rasterio.crs import CRS
    except ImportError:
        return None
    try:
        return CRS.from_user_input(text).to_wkt()
    except Exception as err:  # rasterio raises its own CRSError subclasses
        raise ValueError(f"unrecognised CRS {crs!r}: {err}") from None


def write_georef_sidecar(
    path: str | os.PathLike, *, crs: str | None, offset: Sequence[float], unit_factor: float = 1.0
) -> list[Path]:
    """Side files for formats without a CRS field: ``<file>.geo.json`` (``crs``, ``offset``:
    add it to the stored coordinates for world metres, ``unit_factor``) and, when the CRS has a
    WKT form, an ESRI-style ``<stem>.prj``. Written only when there is something to record."""
    path = Path(path)
    offset = [float(v) for v in offset]
    written: list[Path] = []
    if crs is None and not any(offset):
        return written
    info = {"crs": crs, "offset": offset, "units": "metre", "crs_unit_factor": float(unit_factor)}
    side = path.with_name(path.name + ".geo.json")
    with atomic_write(side) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    written.append(side)
    wkt = crs_to_wkt(crs)
    if wkt is not None:
        prj = path.with_suffix(".prj")
        with atomic_write(prj) as tmp:
            tmp.write_text(wkt)
        written.append(prj)
    return written


def _stale_pattern(name: str | None) -> re.Pattern[str]:
    stem = ".+" if name is None else re.escape(name)
    return re.compile(rf"^\.{stem}(\.[a-z0-9_]{{8}})?\.partial$|^\.{stem}\.[a-z0-9_]{{8}}\.tmp(\.[^.]+)?$")


def remove_stale_partials(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what interrupted writes of ours left in ``folder``: ``.<name>[.<random>].partial``
    folders (``atomic_folders``) and ``.<name>.<random>.tmp[.ext]`` files (``atomic_write``), of
    any name or of ``name`` only. Returns the removed paths.

    Folders moved aside by an interrupted ``atomic_folders`` (``.<name>.<random>.old``) stay: they
    may hold the only complete copy."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _stale_pattern(name)
    removed = sorted(p for p in folder.iterdir() if pattern.match(p.name))
    for path in removed:
        logger.info("removing %s, left by an interrupted write", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk, so that a rename that
    publishes it never points at files a crash could still truncate."""
    for path in [*folder.rglob("*"), folder]:
        if path.is_dir() and os.name != "posix":
            continue  # folders cannot be opened for fsync on Windows
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_folders(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Empty temporary folders beside ``paths`` (``.<name>.<random>.partial``) to write into; when
    the block succeeds, each path is replaced as a whole by its temporary folder, else they are removed.

    Nothing is renamed before every folder is complete (and flushed to disk), so a failed or
    interrupted write leaves the old folders as they were; the old folders all move aside before
    the new ones move in, so the paths never hold a mix of old and new folders. Leftovers of an
    earlier interrupted write to the same paths are removed first (``.partial``) or once the new
    folders are in place (``.old``: a kill between the two renames leaves the only complete copy there).
    """
    finals = [Path(p) for p in paths]
    if len({f.resolve() for f in finals}) != len(finals):
        raise ValueError(f"atomic_folders: a path given twice in {[str(f) for f in finals]}")
    for final in finals:
        if final.exists() and not final.is_dir():
            raise ValueError(f"{final} exists and is not a folder")
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final.parent, final.name)
    temps: list[Path] = []
    try:
        for final in finals:
            temps.append(Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)))
        yield list(temps)
        for tmp in temps:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder the usual mode
            fsync_tree(tmp)
        aside: list[tuple[Path, Path]] = []
        moved_in: list[Path] = []
        try:
            for final in finals:
                if final.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
                    os.replace(final, old)
                    aside.append((old, final))
            for tmp, final in zip(temps, finals):
                os.replace(tmp, final)
                moved_in.append(final)
        except BaseException:
            for final in moved_in:
                shutil.rmtree(final, ignore_errors=True)
            for old, final in aside:
                os.replace(old, final)
            raise
        temps = []
        for final in finals:  # the old copies, and any an interrupted earlier write left aside
            for old in final.parent.glob(f".{glob.escape(final.name)}.*.old"):
                shutil.rmtree(old, ignore_errors=True)
    finally:
        for tmp in temps:
            shutil.rmtree(tmp, ignore_errors=True)
