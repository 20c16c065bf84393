"""How the command line fails: one line on stderr, no traceback, and an exit status per kind of
failure (:class:`ExitCode`), so scripts can tell a bad argument from a full disk.

Subcommands check what they can before any work (``outputs.check_output_folder``,
:func:`resolve_device`); whatever is raised later is sorted by :func:`classify`.
"""

from __future__ import annotations

import enum
import errno
import json

__all__ = [
    "DeviceUnavailableError",
    "ExitCode",
    "OutputNotWritableError",
    "classify",
    "exit_codes_help",
    "resolve_device",
]


class ExitCode(enum.IntEnum):
    """Exit statuses of ``diffusers-city``."""

    OK = 0
    FAILED = 1  # a run failed otherwise (``demo``: no system ran; an unexpected internal error)
    BAD_INPUT = 2  # a bad argument or input value (argparse's usage errors too)
    MISSING_FILE = 3  # an input file or folder is missing or cannot be read
    CORRUPT_FILE = 4  # an input file or weights file is truncated, corrupt or not what it claims
    OUT_OF_MEMORY = 5  # the estimated peak memory exceeds --max-memory-gb (or memory ran out)
    OUTPUT_NOT_WRITABLE = 6  # the output folder or file cannot be written (permissions, read-only, full disk)
    DEVICE_UNAVAILABLE = 7  # the --device does not exist on this machine
    INTERRUPTED = 130  # Ctrl-C


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the run failed otherwise (demo: no system ran; an internal error)",
    ExitCode.BAD_INPUT: "bad argument or input value",
    ExitCode.MISSING_FILE: "input file missing or unreadable",
    ExitCode.CORRUPT_FILE: "input or weights file corrupt or truncated",
    ExitCode.OUT_OF_MEMORY: "estimated memory above --max-memory-gb / the available memory",
    ExitCode.OUTPUT_NOT_WRITABLE: "output folder or file not writable",
    ExitCode.DEVICE_UNAVAILABLE: "--device not available",
    ExitCode.INTERRUPTED: "interrupted",
}


def exit_codes_help() -> str:
    """The exit statuses as lines for ``--help``."""
    return "exit status:\n" + "\n".join(f"  {int(code):>3}  {_MEANINGS[code]}" for code in ExitCode)


class OutputNotWritableError(OSError):
    """An output folder or file cannot be written."""


class DeviceUnavailableError(ValueError):
    """The requested torch device does not exist or is not usable on this machine."""


_OUTPUT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


_CORRUPT_TYPES = {"SafetensorError", "UnidentifiedImageError", "DecompressionBombError", "BadZipFile", "LaspyException"}


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or during (diffusers wraps a loader's error)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _is_corrupt(error: BaseException) -> bool:
    """Errors of decoders reading damaged data (PIL, safetensors, zip/npy, JSON, text), also when
    a loader re-raised them as its own error."""
    from ..utils.errors import CorruptFileError

    for link in _chain(error):
        if isinstance(link, (CorruptFileError, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
            return True
        if {cls.__name__ for cls in type(link).__mro__} & _CORRUPT_TYPES:
            return True
        if isinstance(link, OSError) and link.errno is None and "truncated" in str(link).lower():
            return True
    return False


def classify(error: BaseException) -> tuple[ExitCode, str]:
    """The exit status and the one-line message for an error that ended a subcommand."""
    from ..utils.memory import MemoryLimitError  # here, not at the top: --help imports no torch

    notes = "".join(f" {note}" for note in getattr(error, "__notes__", ()))  # e.g. the tile an area run failed on
    message = (str(error) or type(error).__name__) + notes
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted" + notes
    if isinstance(error, (MemoryLimitError, MemoryError)) or type(error).__name__ == "OutOfMemoryError":
        text = message if isinstance(error, MemoryLimitError) else f"out of memory ({type(error).__name__}: {message})"
        return ExitCode.OUT_OF_MEMORY, text
    if isinstance(error, DeviceUnavailableError):
        return ExitCode.DEVICE_UNAVAILABLE, message
    if isinstance(error, OutputNotWritableError) or (isinstance(error, OSError) and error.errno in _OUTPUT_ERRNOS):
        return ExitCode.OUTPUT_NOT_WRITABLE, message
    if _is_corrupt(error):
        return ExitCode.CORRUPT_FILE, f"corrupt or unreadable file: {message}"
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return ExitCode.MISSING_FILE, message
    if isinstance(error, ValueError):
        return ExitCode.BAD_INPUT, message
    if isinstance(error, OSError):
        return ExitCode.MISSING_FILE, message
    return ExitCode.FAILED, f"internal error ({type(error).__name__}: {message}); set DIFFUSERS_CITY_TRACEBACK=1 for details"


def resolve_device(name: str | None, option: str = "--device") -> str:
    """``name`` if this machine has that torch device (default: cuda when available, else cpu);
    ``DeviceUnavailableError`` naming it otherwise."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise DeviceUnavailableError(f"{option} {name}: not a torch device ({error})") from None
    kind = device.type
    backend = getattr(torch, kind, None) if kind != "cpu" else None
    if kind == "cuda":
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    elif kind == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif kind == "cpu":
        available, count = True, 1
    else:
        available = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
        count = getattr(backend, "device_count", lambda: 1)() if available else 0
    if not available:
        raise DeviceUnavailableError(f"{option} {name}: no {kind} device on this machine")
    if device.index is not None and device.index >= count:
        raise DeviceUnavailableError(f"{option} {name}: this machine has {count} {kind} device(s)")
    return name
