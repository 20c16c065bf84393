"""The sparse 3D core: ``SparseTensor``, run-time backend choice, layers (``nn``), ``ops``,
space-filling-curve ``serialize``, sparse ``attention`` and conditioned ``transformer`` blocks."""

from . import attention, nn, ops, transformer
from .attention import SerializedAttention, SparseCrossAttention, SparseTransformerBlock, SparseWindowAttention
from .backend import available_backends, backend_name, use_backend
from .serialize import serialize
from .tensor import SparseTensor
from .transformer import SparseDiTBlock

__all__ = [
    "SerializedAttention",
    "SparseCrossAttention",
    "SparseDiTBlock",
    "SparseTensor",
    "SparseTransformerBlock",
    "SparseWindowAttention",
    "attention",
    "available_backends",
    "backend_name",
    "nn",
    "ops",
    "serialize",
    "transformer",
    "use_backend",
]
