"""Generic helpers that know no paper: CUDA-graph capture, host-to-device upload and checked weight loading."""

from .cuda_graph import CapturedCall
from .device import upload

__all__ = ["CapturedCall", "upload"]
