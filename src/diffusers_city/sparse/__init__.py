"""The sparse 3D core: ``SparseTensor``, run-time backend choice, layers (``nn``), ``ops``,
space-filling-curve ``serialize`` and sparse ``attention``."""

from . import attention, nn, ops
from .attention import SerializedAttention, SparseTransformerBlock, SparseWindowAttention
from .backend import available_backends, backend_name, use_backend
from .serialize import serialize
from .tensor import SparseTensor

__all__ = [
    "SerializedAttention",
    "SparseTensor",
    "SparseTransformerBlock",
    "SparseWindowAttention",
    "attention",
    "available_backends",
    "backend_name",
    "nn",
    "ops",
    "serialize",
    "use_backend",
]
