"""Generic helpers that know no paper: CUDA-graph capture and host-to-device upload."""

from .cuda_graph import CapturedCall
from .device import upload

__all__ = ["CapturedCall", "upload"]
