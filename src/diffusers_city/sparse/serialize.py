"""Serialization of sparse voxel / point coordinates along space-filling curves.

Point transformers in the PTv3 family (GaussianCity's BEV-point decoder, Sec. 3.3 "Point
Serializer") turn an unordered point set into a sequence by sorting the points along a curve,
then attend inside fixed-size patches of that sequence. Three orders are provided:

- ``"z"``: Morton / z-order (bit interleaving, x most significant at every level).
- ``"hilbert"``: 3D Hilbert curve (Skilling's transpose algorithm), consecutive cells of a full
  cube are always face neighbours.
- ``"grid"``: GaussianCity's Eq. 13: coordinates quantized by a grid size ``g`` and the cells
  ordered row-major with x major, i.e. ``key = (qx * Ny + qy) * Nz + qz``.

Every key carries the batch index in its high bits, so sorting keys groups points by batch item.
All codes are computed with vectorized integer tensor ops (CPU or GPU); the only Python loops run
over bits, never over points.

Key layout (int64, non-negative): ``key = b << (3 * bits) | code`` where ``code < 2 ** (3 * bits)``.
Coordinates are shifted per call by their minimum over all points, then divided (floor) by
``grid_size``; ``bits`` per axis must cover the largest shifted cell index. At most
``MAX_BITS = 21`` bits per axis; the batch index needs ``b < 2 ** (63 - 3 * bits)`` (e.g. with
``bits = 16``, i.e. spans of up to 65,536 cells, up to 32,768 batch items).
"""

from __future__ import annotations

import torch

__all__ = ["MAX_BITS", "ORDERS", "curve_code", "inverse_permutation", "key_bits", "serialize", "sort_by_key"]

MAX_BITS = 21
ORDERS = ("z", "hilbert", "grid")

# Masks spreading the low 21 bits of an integer to every third bit (bit i -> bit 3 i).
_SPREAD_STEPS = (
    (32, 0x1F00000000FFFF),
    (16, 0x1F0000FF0000FF),
    (8, 0x100F00F00F00F00F),
    (4, 0x10C30C30C30C30C3),
    (2, 0x1249249249249249),
)


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Move bit ``i`` of ``v`` (int64, < 2**21) to bit ``3 i``."""
    v = v & 0x1FFFFF
    for shift, mask in _SPREAD_STEPS:
        v = (v | (v << shift)) & mask
    return v


def _morton(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Interleave bits as ``... x1 y1 z1 x0 y0 z0`` (x most significant at every level)."""
    return (_spread_bits(x) << 2) | (_spread_bits(y) << 1) | _spread_bits(z)


def _hilbert(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, bits: int) -> torch.Tensor:
    """3D Hilbert index of cells in ``[0, 2**bits)^3`` (J. Skilling, "Programming the Hilbert
    curve", AIP Conf. Proc. 707, 2004): axes -> transposed Hilbert index, then bit interleave."""
    axes = [x.clone(), y.clone(), z.clone()]
    q = 1 << (bits - 1)
    while q > 1:
        p = q - 1
        for i in range(3):
            bit_set = (axes[i] & q) != 0
            # bit set: invert the low bits of axis 0; otherwise exchange low bits of axes 0 and i.
            t = torch.where(bit_set, torch.zeros_like(axes[0]), (axes[0] ^ axes[i]) & p)
            axes[0] = torch.where(bit_set, axes[0] ^ p, axes[0] ^ t)
            if i:
                axes[i] = axes[i] ^ t
        q >>= 1
    # Gray encode.
    axes[1] = axes[1] ^ axes[0]
    axes[2] = axes[2] ^ axes[1]
    t = torch.zeros_like(axes[0])
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((axes[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    return _morton(axes[0] ^ t, axes[1] ^ t, axes[2] ^ t)


def _check_int_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must have an integer dtype, got {t.dtype}")


def serialize(coords: torch.Tensor, order: str = "z", grid_size: int = 1, bits: int | None = None) -> torch.Tensor:
    """Curve keys of voxel coordinates.

    Args:
        coords: ``[N, 4]`` integer tensor ``(b, x, y, z)``; batch indices ``b >= 0``, spatial
            coordinates may be negative (they are shifted by their minimum per call).
        order: ``"z"`` (Morton), ``"hilbert"`` or ``"grid"`` (GaussianCity Eq. 13, x major).
        grid_size: cell size ``g`` in coordinate units; coordinates are quantized as
            ``floor((c - min) / g)`` before encoding, points sharing a cell share a key.
        bits: bits per axis of the cell indices (``1..MAX_BITS``); ``None`` uses the fewest
            that fit. Fixing it makes keys of different calls share one layout.

    Returns:
        ``[N]`` int64 keys, ``b << (3 * bits) | code``; sort them (stably) to serialize.
    """
    _check_int_tensor("coords", coords)
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must have shape [N, 4] (b, x, y, z), got {list(coords.shape)}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size <= 0:
        raise ValueError(f"grid_size must be a positive int, got {grid_size!r}")
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS):
        raise ValueError(f"bits must be None or an int in 1..{MAX_BITS}, got {bits!r}")
    coords = coords.long()
    if coords.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=coords.device)
    batch = coords[:, 0]
    xyz = coords[:, 1:]
    cells = torch.div(xyz - xyz.min(dim=0).values, grid_size, rounding_mode="floor")
    batch_max, batch_min, cell_max = (int(v) for v in torch.stack([batch.max(), batch.min(), cells.max()]).tolist())
    if batch_min < 0:
        raise ValueError(f"batch indices (coords[:, 0]) must be >= 0, got minimum {batch_min}")
    bits = key_bits(cell_max, batch_max, bits)
    return (batch << (3 * bits)) | curve_code(cells, order, bits)


def key_bits(cell_max: int, batch_max: int, bits: int | None = None) -> int:
    """Bits per axis of keys over cell indices ``0..cell_max`` and batch items ``0..batch_max``:
    ``bits`` where given (checked), else the fewest that fit.

    Raises:
        ValueError: if the cells need more than ``bits`` or ``MAX_BITS`` bits, or the batch index
            does not fit in the high bits left.
    """
    needed = max(1, cell_max.bit_length())
    if bits is None:
        bits = needed
    elif needed > bits:
        raise ValueError(f"bits={bits} cannot hold cell index {cell_max} (needs {needed} bits per axis)")
    if needed > MAX_BITS:
        raise ValueError(
            f"coordinate span of {cell_max + 1} cells needs {needed} bits per axis, more than MAX_BITS={MAX_BITS}; "
            "raise grid_size"
        )
    if batch_max >= 1 << (63 - 3 * bits):
        raise ValueError(f"batch index {batch_max} does not fit in the {63 - 3 * bits} high bits left by {bits} bits per axis")
    return bits


def curve_code(cells: torch.Tensor, order: str, bits: int) -> torch.Tensor:
    """Curve index of non-negative int64 cells ``[N, 3]`` below ``2 ** bits`` (unchecked: see
    :func:`key_bits`), without host syncs; :func:`serialize` puts the batch index above it."""
    x, y, z = cells.unbind(1)
    if order == "z":
        return _morton(x, y, z)
    if order == "hilbert":
        return _hilbert(x, y, z, bits)
    return (x << (2 * bits)) | (y << bits) | z


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i``, so ``sorted_values[inv]`` restores the original order."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device, dtype=perm.dtype)
    return inv


def sort_by_key(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable ``(order, inverse)``: ``values[order]`` is serialized, ``serialized[inverse]`` undoes it."""
    if keys.dim() != 1:
        raise ValueError(f"keys must have shape [N], got {list(keys.shape)}")
    order = torch.argsort(keys, stable=True)
    return order, inverse_permutation(order)
