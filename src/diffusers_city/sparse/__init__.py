"""The sparse 3D core: ``SparseTensor``, run-time backend choice, layers (``nn``) and ``ops``."""

from . import nn, ops
from .backend import available_backends, backend_name, use_backend
from .tensor import SparseTensor

__all__ = ["SparseTensor", "available_backends", "backend_name", "nn", "ops", "use_backend"]
