"""Generic helpers that know no paper: CUDA-graph capture, host-to-device upload, checked weight loading, memory checks."""

from .cuda_graph import CapturedCall
from .device import upload
from .errors import CorruptFileError
from .memory import MemoryLimitError, available_memory_gb, check_memory, memory_limit_gb

__all__ = [
    "CapturedCall",
    "CorruptFileError",
    "MemoryLimitError",
    "available_memory_gb",
    "check_memory",
    "memory_limit_gb",
    "upload",
]
