"""Gaussian splat containers and the backend-dispatching ``render_gaussians`` entry point.

3D Gaussian splatting (Kerbl et al. 2023) and 2D Gaussian surfels (Huang et al. 2024, used by
EarthCrafter's TexVAE decoder, EarthCrafter Sec. 3) share one parameterisation here:
``means [N, 3]`` world metres, ``quats [N, 4]`` (w, x, y, z; need not be normalised),
``scales [N, 3]`` linear (for 2DGS the third scale is ignored), ``opacities [N]`` in 0..1 and
``colors [N, 3]`` in 0..1. Conventions and numbers follow gsplat 1.5.3 so the pure-torch
reference (``backend="torch"``) and gsplat's CUDA kernels (``backend="gsplat"``) agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.utils import BaseOutput
from torch import Tensor

from .cameras import Cameras


@dataclass
class Gaussians:
    """A set of ``N`` Gaussian splats (see the module docstring for units and conventions)."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        fields = {name: getattr(self, name) for name in ("means", "quats", "scales", "opacities", "colors")}
        for name, value in fields.items():
            value = torch.as_tensor(value)
            if not value.is_floating_point():
                value = value.float()
            setattr(self, name, value)
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "colors": (n, 3)}
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ValueError(f"Gaussians.means must have shape [N, 3], got {tuple(self.means.shape)}")
        for name, shape in expected.items():
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                dims = ", ".join(["N"] + [str(s) for s in shape[1:]])
                raise ValueError(f"Gaussians.{name} must have shape [{dims}] with N={n}, got {tuple(value.shape)}")
            if value.device != self.means.device:
                raise ValueError(f"Gaussians.{name} is on {value.device} but means are on {self.means.device}")
        if n:
            self._check_values(fields)

    def _check_values(self, names) -> None:
        """Value checks, reduced on the device and read back in one host sync (decoders build
        Gaussians every frame)."""
        bad = torch.stack(
            [~torch.isfinite(getattr(self, name)).all() for name in names]
            + [(self.scales < 0).any(), ((self.opacities < 0) | (self.opacities > 1)).any(), (self.quats.norm(dim=-1) == 0).any()]
        ).tolist()
        for name, flag in zip(names, bad):
            if flag:
                raise ValueError(f"Gaussians.{name} contains NaN or Inf")
        messages = (
            "Gaussians.scales must be non-negative (linear scales, not log-scales)",
            "Gaussians.opacities must lie in [0, 1] (activated opacities, not logits)",
            "Gaussians.quats contains a zero quaternion",
        )
        for message, flag in zip(messages, bad[len(names) :]):
            if flag:
                raise ValueError(message)

    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Tensor,
        *,
        scale: float | Tensor = 0.5,
        opacity: float | Tensor = 1.0,
        normals: Tensor | None = None,
    ) -> Gaussians:
        """Splats centred on ``points [N, 3]`` (GaussianCity Sec. 3.3 defaults: opacity 1, identity rotation).

        ``scale`` (linear) is a number, ``[N]`` (per point), ``[3]`` / ``[1, 3]`` (per axis) or
        ``[N, 3]``; a 1-D ``scale`` of length N is per point. With ``normals [N, 3]``
        each splat's local z axis is turned onto its normal (the surfel normal for 2DGS).
        """
        points = torch.as_tensor(points, dtype=torch.float32) if not torch.is_tensor(points) else points
        n, device, dtype = points.shape[0], points.device, points.dtype
        scales = torch.as_tensor(scale, device=device, dtype=dtype)
        if scales.ndim == 1 and scales.shape[0] == n:
            scales = scales[:, None]
        if (
            scales.ndim > 2
            or (scales.ndim >= 1 and scales.shape[-1] not in (1, 3))
            or (scales.ndim == 2 and scales.shape[0] not in (1, n))
        ):
            raise ValueError(f"from_points: scale must be a number, [N], [3] or [N, 3], got {tuple(scales.shape)}")
        scales = scales.expand(n, 3)
        opacities = torch.as_tensor(opacity, device=device, dtype=dtype).expand(n)
        quats = torch.tensor([1.0, 0.0, 0.0, 0.0], device=device, dtype=dtype).expand(n, 4)
        if normals is not None:
            nrm = torch.nn.functional.normalize(torch.as_tensor(normals, device=device, dtype=dtype), dim=-1)
            # rotation taking +z to n: axis z x n, w = 1 + z.n (half-angle form); n = -z -> 180 deg about x
            quats = torch.stack([1.0 + nrm[:, 2], -nrm[:, 1], nrm[:, 0], torch.zeros_like(nrm[:, 0])], dim=-1)
            flipped = quats.norm(dim=-1) < 1e-6
            quats = torch.where(flipped[:, None], torch.tensor([0.0, 1.0, 0.0, 0.0], device=device, dtype=dtype), quats)
        return cls(
            means=points,
            quats=quats.contiguous(),
            scales=scales.contiguous(),
            opacities=opacities.contiguous(),
            colors=torch.as_tensor(colors, device=device, dtype=dtype),
        )

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device=None, dtype=None) -> Gaussians:
        return Gaussians(*(getattr(self, f).to(device=device, dtype=dtype) for f in self._fields()))

    def __getitem__(self, idx) -> Gaussians:
        return Gaussians(*(getattr(self, f)[idx] for f in self._fields()))

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return ("means", "quats", "scales", "opacities", "colors")


@dataclass
class RenderOutput(BaseOutput):
    """Rendered images; ``depth`` is the expected camera z (``sum w_i z_i / alpha``, 0 where empty).

    ``normal`` (2DGS only, else ``None``): alpha-weighted splat normals in world coordinates,
    facing the camera, as gsplat's ``rasterization_2dgs`` returns them.
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    normal: Tensor | None = None


def _background(background, num_cameras: int, device, dtype) -> Tensor:
    if background is None:
        return torch.zeros(num_cameras, 3, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.shape == (3,):
        bg = bg.expand(num_cameras, 3)
    if bg.shape != (num_cameras, 3) or not bool(torch.isfinite(bg).all()):
        raise ValueError(f"background must be finite with shape [3] or [C, 3] (C={num_cameras}), got {tuple(bg.shape)}")
    return bg


def _gsplat_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_gaussians(
    g: Gaussians,
    cameras: Cameras,
    mode: Literal["3dgs", "2dgs"] = "3dgs",
    backend: Literal["torch", "gsplat"] | None = None,
    background=None,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    max_chunk_elements: int = 1 << 22,
) -> RenderOutput:
    """Render Gaussians from every camera: ``rgb [C, H, W, 3]``, ``depth``/``alpha [C, H, W, 1]``.

    ``mode="3dgs"``: EWA splatting with the 2D blur ``eps2d``; ``mode="2dgs"``: ray-splat
    intersection of surfels with gsplat's screen-space low-pass filter. ``backend=None``
    picks gsplat on CUDA when it imports, else the pure-torch reference (differentiable,
    CPU or GPU). ``background`` (``[3]`` or ``[C, 3]``, default black) fills ``1 - alpha``.
    Cameras that see no Gaussian give a background frame.
    """
    if mode not in ("3dgs", "2dgs"):
        raise ValueError(f"mode must be '3dgs' or '2dgs', got {mode!r}")
    if backend not in (None, "torch", "gsplat"):
        raise ValueError(f"backend must be None, 'torch' or 'gsplat', got {backend!r}")
    if not isinstance(g, Gaussians):
        raise ValueError(f"render_gaussians expects a Gaussians, got {type(g).__name__}")
    if not isinstance(cameras, Cameras):
        raise ValueError(f"render_gaussians expects a Cameras, got {type(cameras).__name__}")
    if not (0.0 <= near_plane < far_plane):
        raise ValueError(f"need 0 <= near_plane < far_plane, got {near_plane}, {far_plane}")
    if eps2d < 0:
        raise ValueError(f"eps2d must be >= 0, got {eps2d}")
    device, dtype = g.means.device, g.means.dtype
    cameras = cameras.to(device=device, dtype=dtype)
    bg = _background(background, len(cameras), device, dtype)
    if backend is None:
        backend = "gsplat" if _gsplat_available(device) else "torch"
    if backend == "gsplat" and not _gsplat_available(device):
        raise ValueError("backend='gsplat' needs CUDA tensors and the gsplat package (pip install gsplat)")

    C, H, W = len(cameras), cameras.height, cameras.width
    if len(g) == 0 or C == 0:
        zeros = torch.zeros(C, H, W, 1, device=device, dtype=dtype)
        rgb = bg[:, None, None, :].expand(C, H, W, 3).clone()
        normal = torch.zeros(C, H, W, 3, device=device, dtype=dtype) if mode == "2dgs" else None
        return RenderOutput(rgb=rgb, depth=zeros, alpha=zeros.clone(), normal=normal)

    if backend == "gsplat":
        from .rasterize_gsplat import rasterize_gsplat

        return rasterize_gsplat(g, cameras, mode, bg, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
    from .rasterize_torch import rasterize_torch

    return rasterize_torch(
        g,
        cameras,
        mode,
        bg,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        max_chunk_elements=max_chunk_elements,
    )
