"""``SparseTensor``: features on the active voxels of a batch of sparse 3D grids.

A voxel with integer index ``c = (x, y, z)`` has its centre at world ``origin + c * voxel_size``
(``origin`` is the centre of voxel (0, 0, 0), see docs/design.md). ``stride`` counts how many
times the grid was downsampled from the finest level (1 = finest). Coordinates may be any int32
values, negative ones included. Kernel maps and the coordinate hash are cached in ``.cache``,
which ``replace`` shares, so every layer on one structure builds them once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def _as_origin(origin: Sequence[float] | torch.Tensor) -> tuple[float, float, float]:
    values = origin.tolist() if isinstance(origin, torch.Tensor) else list(origin)
    if len(values) != 3:
        raise ValueError(f"origin must have 3 values (x, y, z), got {len(values)}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` along dim 0 for a long index or a bool mask, through ``index_select``.

    Plain advanced indexing backpropagates through ``index_put_(accumulate=True)``, whose CUDA
    kernel sorts the indices and was ~80% of a Sat2City VAE training step on an H200 (a
    [batch]-row gather in GroupNorm alone: ~3 ms per call); ``index_select``'s backward is an
    atomic ``index_add_``.
    """
    if index.dtype == torch.bool:
        index = index.nonzero().squeeze(1)
    return t.index_select(0, index)


class SparseTensor:
    """Features ``feats`` [N, C] on voxels ``coords`` [N, 4] int32 = (batch, x, y, z).

    Args:
        feats: floating-point features, one row per active voxel.
        coords: integer voxel indices; column 0 is the batch item, columns 1..3 any int32 values.
        voxel_size: edge length of one voxel in world units (metres).
        origin: world position of the centre of voxel (0, 0, 0).
        stride: downsampling factor of this grid relative to the finest level.
        batch_size: number of batch items (default: largest batch index + 1, 0 when empty).
        validate: check shapes, dtypes, batch indices and duplicate voxels. Pass ``False`` only
            for tensors built from already valid ones (the check sorts the coordinates once and
            caches the result, so it is cheap but not free).

    Raises:
        ValueError: naming the problem, before any work, for malformed input.
    """

    __slots__ = ("feats", "coords", "voxel_size", "origin", "stride", "batch_size", "cache")

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        *,
        voxel_size: float = 1.0,
        origin: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
        stride: int = 1,
        batch_size: int | None = None,
        validate: bool = True,
    ) -> None:
        if validate:
            feats, coords, batch_size = self._check(feats, coords, voxel_size, stride, batch_size)
        elif batch_size is None:
            batch_size = int(coords[:, 0].max()) + 1 if coords.shape[0] else 0
        self.feats = feats
        self.coords = coords
        self.voxel_size = float(voxel_size)
        self.origin = _as_origin(origin)
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.cache: dict = {}
        if validate and coords.shape[0] > 1:
            from .kernel_map import coord_index

            index = coord_index(self)
            keys = index.sorted_keys
            dup = keys[1:] == keys[:-1]
            if bool(dup.any()):
                row = int(index.perm[1:][dup][0])
                raise ValueError(f"duplicate coordinates in one batch item: {coords[row].tolist()}")

    @staticmethod
    def _check(
        feats: torch.Tensor, coords: torch.Tensor, voxel_size: float, stride: int, batch_size: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        if not isinstance(feats, torch.Tensor) or not isinstance(coords, torch.Tensor):
            raise ValueError("feats and coords must be torch tensors")
        if not feats.is_floating_point():
            raise ValueError(f"feats must be a floating-point tensor, got {feats.dtype}")
        if feats.ndim != 2:
            raise ValueError(f"feats must have shape [N, C], got {tuple(feats.shape)}")
        if feats.shape[1] == 0:
            raise ValueError("feats must have at least one channel (C > 0)")
        if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
            raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must have shape [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
        if coords.shape[0] != feats.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}")
        if coords.device != feats.device:
            raise ValueError(f"feats is on {feats.device} but coords is on {coords.device}")
        if not (float(voxel_size) > 0):
            raise ValueError(f"voxel_size must be positive, got {voxel_size}")
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 0):
            raise ValueError(f"batch_size must be a non-negative integer, got {batch_size}")
        n = coords.shape[0]
        if n == 0:
            return feats, coords.to(torch.int32), int(batch_size or 0)
        lo, hi = torch.stack([coords.amin(0).long(), coords.amax(0).long()]).tolist()
        if lo[0] < 0:
            raise ValueError(f"batch indices must be >= 0, got {lo[0]}")
        if min(lo[1:]) < _INT32_MIN or max(hi[1:]) > _INT32_MAX:
            raise ValueError("coords must fit in int32")
        if batch_size is None:
            batch_size = hi[0] + 1
        elif hi[0] >= batch_size:
            raise ValueError(f"batch index {hi[0]} out of range for batch_size {batch_size}")
        coords = coords if coords.dtype == torch.int32 else coords.to(torch.int32)
        return feats, coords.contiguous(), int(batch_size)

    # -- construction helpers -------------------------------------------------------------
    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same structure and metadata with new features; shares the cached kernel maps."""
        if feats.ndim != 2 or feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"replace needs feats of shape [{self.coords.shape[0]}, C], got {tuple(feats.shape)}")
        out = self.derive(feats, self.coords)
        out.cache = self.cache
        return out

    def derive(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        *,
        voxel_size: float | None = None,
        origin: Sequence[float] | None = None,
        stride: int | None = None,
    ) -> SparseTensor:
        """A new tensor built internally from valid parts (no validation), metadata defaulting to self's."""
        return SparseTensor(
            feats,
            coords,
            voxel_size=self.voxel_size if voxel_size is None else voxel_size,
            origin=self.origin if origin is None else origin,
            stride=self.stride if stride is None else stride,
            batch_size=self.batch_size,
            validate=False,
        )

    def to(self, *args, **kwargs) -> SparseTensor:
        """Move/cast like ``torch.Tensor.to``: features take device and dtype, coords only the device."""
        feats = self.feats.to(*args, **kwargs)
        out = self.derive(feats, self.coords.to(feats.device))
        if feats.device == self.feats.device:
            out.cache = self.cache
        return out

    # -- properties -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    @property
    def num_voxels(self) -> int:
        return self.feats.shape[0]

    def __repr__(self) -> str:
        return (
            f"SparseTensor(N={self.num_voxels}, C={self.num_channels}, batch_size={self.batch_size}, "
            f"voxel_size={self.voxel_size}, origin={self.origin}, stride={self.stride}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # -- geometry -------------------------------------------------------------------------
    def world_positions(self) -> torch.Tensor:
        """World-space centres [N, 3] of the active voxels (features' dtype if floating)."""
        dtype = self.feats.dtype if self.feats.dtype in (torch.float32, torch.float64) else torch.float32
        origin = torch.tensor(self.origin, dtype=dtype, device=self.device)
        return origin + self.coords[:, 1:].to(dtype) * self.voxel_size

    # -- batch handling -------------------------------------------------------------------
    def batch(self, i: int) -> SparseTensor:
        """Batch item ``i`` as its own tensor (batch index 0, batch_size 1)."""
        if not 0 <= i < self.batch_size:
            raise ValueError(f"batch item {i} out of range for batch_size {self.batch_size}")
        keep = self.coords[:, 0] == i
        coords = self.coords[keep].clone()
        coords[:, 0] = 0
        out = self.derive(take_rows(self.feats, keep), coords)
        out.batch_size = 1
        return out

    def __iter__(self) -> Iterator[SparseTensor]:
        return (self.batch(i) for i in range(self.batch_size))

    @staticmethod
    def cat(tensors: Sequence[SparseTensor]) -> SparseTensor:
        """Concatenate along the batch: item ``j`` of tensor ``t`` becomes item ``offset_t + j``."""
        if len(tensors) == 0:
            raise ValueError("cat needs at least one SparseTensor")
        first = tensors[0]
        for t in tensors[1:]:
            if (t.voxel_size, t.origin, t.stride) != (first.voxel_size, first.origin, first.stride):
                raise ValueError("cat needs equal voxel_size, origin and stride on every tensor")
            if t.num_channels != first.num_channels or t.device != first.device:
                raise ValueError("cat needs equal channel counts and devices on every tensor")
        coords, offset = [], 0
        for t in tensors:
            c = t.coords.clone()
            c[:, 0] += offset
            coords.append(c)
            offset += t.batch_size
        out = first.derive(torch.cat([t.feats for t in tensors]), torch.cat(coords))
        out.batch_size = offset
        return out

    # -- dense conversion -----------------------------------------------------------------
    def to_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense grid ``[B, C, X, Y, Z]`` (zeros off the active set) and ``offset`` [3] int64:
        dense index ``(x, y, z) - offset`` holds voxel ``(x, y, z)``; offset = per-axis minimum."""
        c = self.coords.long()
        if c.shape[0] == 0:
            offset = torch.zeros(3, dtype=torch.long, device=self.device)
            return self.feats.new_zeros(self.batch_size, self.num_channels, 0, 0, 0), offset
        offset = c[:, 1:].amin(0)
        size = (c[:, 1:].amax(0) - offset + 1).tolist()
        dense = self.feats.new_zeros(self.batch_size, *size, self.num_channels)
        local = c[:, 1:] - offset
        dense = dense.index_put((c[:, 0], local[:, 0], local[:, 1], local[:, 2]), self.feats)
        return dense.permute(0, 4, 1, 2, 3).contiguous(), offset

    @classmethod
    def from_dense(
        cls,
        dense: torch.Tensor,
        offset: Sequence[int] | torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        voxel_size: float = 1.0,
        origin: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
        stride: int = 1,
    ) -> SparseTensor:
        """Sparse tensor of a dense ``[B, C, X, Y, Z]`` grid; voxel ``(x, y, z)`` comes from dense
        index ``(x, y, z) - offset``. Active voxels: ``mask`` [B, X, Y, Z] if given, else those
        with any non-zero channel."""
        if not isinstance(dense, torch.Tensor) or dense.ndim != 5:
            raise ValueError(f"dense must be a [B, C, X, Y, Z] tensor, got {getattr(dense, 'shape', type(dense))}")
        if not dense.is_floating_point():
            raise ValueError(f"dense must be floating point, got {dense.dtype}")
        if mask is None:
            mask = (dense != 0).any(1)
        elif mask.shape != dense.shape[:1] + dense.shape[2:] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {tuple(dense.shape[:1] + dense.shape[2:])}")
        offset_t = torch.zeros(3, dtype=torch.long, device=dense.device)
        if offset is not None:
            offset_t = torch.as_tensor(offset, device=dense.device)
            if offset_t.shape != (3,) or offset_t.dtype.is_floating_point:
                raise ValueError("offset must be 3 integers")
        flat = mask.reshape(-1).nonzero().squeeze(1)
        feats = take_rows(dense.permute(0, 2, 3, 4, 1).reshape(mask.numel(), dense.shape[1]), flat)
        coords = torch.stack(torch.unravel_index(flat, mask.shape), 1)
        coords[:, 1:] += offset_t.long()
        return cls(
            feats,
            coords.to(torch.int32),
            voxel_size=voxel_size,
            origin=origin,
            stride=stride,
            batch_size=dense.shape[0],
        )
