"""Pinhole cameras in the OpenCV convention shared by every renderer of the package.

Camera frame: x right, y down, z forward (the viewing direction). ``K [C, 3, 3]`` holds
the intrinsics in pixels (``fx, fy, cx, cy``; the centre of pixel ``(i, j)`` is at
``(j + 0.5, i + 0.5)``, as in gsplat), ``world_to_cam [C, 4, 4]`` maps homogeneous world
points (metres, z up, see docs/design.md) to the camera frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_WORLD_UP = (0.0, 0.0, 1.0)


def _as_tensor(x, dtype=torch.float32, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device if device is not None else x.device, dtype=dtype)
    return torch.as_tensor(x, dtype=dtype, device=device)


@dataclass
class Cameras:
    """A batch of ``C`` pinhole cameras sharing one image size.

    Args:
        K: intrinsics ``[C, 3, 3]`` in pixels (OpenCV).
        world_to_cam: extrinsics ``[C, 4, 4]`` (OpenCV camera frame: x right, y down, z forward).
        width: image width in pixels.
        height: image height in pixels.
    """

    K: Tensor
    world_to_cam: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = torch.as_tensor(self.K)
        if not self.K.is_floating_point():
            self.K = self.K.float()
        self.world_to_cam = _as_tensor(self.world_to_cam, dtype=self.K.dtype, device=self.K.device)
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.world_to_cam.ndim == 2:
            self.world_to_cam = self.world_to_cam[None]
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"Cameras.K must have shape [C, 3, 3], got {tuple(self.K.shape)}")
        if self.world_to_cam.ndim != 3 or self.world_to_cam.shape[1:] != (4, 4):
            raise ValueError(f"Cameras.world_to_cam must have shape [C, 4, 4], got {tuple(self.world_to_cam.shape)}")
        if self.K.shape[0] != self.world_to_cam.shape[0]:
            raise ValueError(f"Cameras.K has {self.K.shape[0]} cameras but world_to_cam has {self.world_to_cam.shape[0]}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width <= 0 or self.height <= 0:
            raise ValueError(f"Cameras image size must be positive integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if not bool(torch.isfinite(self.K).all()) or not bool(torch.isfinite(self.world_to_cam).all()):
            raise ValueError("Cameras.K / world_to_cam contain NaN or Inf")
        if self.K.shape[0] and bool(((self.K[:, 0, 0] <= 0) | (self.K[:, 1, 1] <= 0)).any()):
            raise ValueError("Cameras.K has a non-positive focal length (fx or fy <= 0)")

    # ----------------------------------------------------------------------------------------
    # constructors
    @classmethod
    def look_at(
        cls,
        eye,
        target,
        up: Sequence[float] | Tensor = _WORLD_UP,
        *,
        width: int,
        height: int,
        fov_deg: float | None = 60.0,
        focal: float | None = None,
    ) -> Cameras:
        """Cameras at ``eye [C, 3]`` (or ``[3]``) looking at ``target``, ``up`` = world z by default.

        ``focal`` (pixels, fx = fy) wins over ``fov_deg`` (the vertical field of view). The
        principal point is the image centre. When the viewing direction is parallel to
        ``up`` (a top-down view), world +y is used as the up hint instead.
        """
        eye = _as_tensor(eye)
        target = _as_tensor(target, device=eye.device)
        up = _as_tensor(up, device=eye.device)
        eye, target, up = torch.broadcast_tensors(*(t.reshape(-1, 3) if t.ndim < 2 else t for t in (eye, target, up)))
        if not (torch.isfinite(eye).all() and torch.isfinite(target).all() and torch.isfinite(up).all()):
            raise ValueError("look_at: eye / target / up contain NaN or Inf")
        forward = target - eye
        dist = forward.norm(dim=-1, keepdim=True)
        if bool((dist < 1e-9).any()):
            raise ValueError("look_at: eye and target coincide")
        forward = forward / dist
        right = torch.cross(forward, up, dim=-1)
        degenerate = right.norm(dim=-1, keepdim=True) < 1e-6 * up.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alt_up = torch.tensor([0.0, 1.0, 0.0], device=eye.device).expand_as(up)
        right = torch.where(degenerate, torch.cross(forward, alt_up, dim=-1), right)
        right = right / right.norm(dim=-1, keepdim=True)
        down = torch.cross(forward, right, dim=-1)
        R = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world
        w2c = torch.eye(4).repeat(eye.shape[0], 1, 1)
        w2c[:, :3, :3] = R
        w2c[:, :3, 3] = -(R @ eye[..., None])[..., 0]
        K = intrinsics(width, height, fov_deg=fov_deg, focal=focal).expand(eye.shape[0], 3, 3).clone()
        return cls(K=K, world_to_cam=w2c, width=width, height=height)

    @classmethod
    def cat(cls, cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate camera batches of the same image size."""
        if not cameras:
            raise ValueError("Cameras.cat needs at least one Cameras")
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"Cameras.cat: image sizes differ: {sorted(sizes)}")
        return cls(
            K=torch.cat([c.K for c in cameras]),
            world_to_cam=torch.cat([c.world_to_cam for c in cameras]),
            width=cameras[0].width,
            height=cameras[0].height,
        )

    # ----------------------------------------------------------------------------------------
    # accessors
    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.K.shape[0]

    @property
    def device(self) -> torch.device:
        return self.K.device

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(K=self.K[idx], world_to_cam=self.world_to_cam[idx], width=self.width, height=self.height)

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(
            K=self.K.to(device=device, dtype=dtype),
            world_to_cam=self.world_to_cam.to(device=device, dtype=dtype),
            width=self.width,
            height=self.height,
        )

    @property
    def cam_to_world(self) -> Tensor:
        """``[C, 4, 4]`` inverse of ``world_to_cam``."""
        return torch.linalg.inv(self.world_to_cam)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates ``[C, 3]``."""
        R = self.world_to_cam[:, :3, :3]
        t = self.world_to_cam[:, :3, 3]
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points ``[N, 3]`` -> pixel coordinates ``[C, N, 2]`` and depth ``[C, N]``.

        Depth is the camera-frame z; points with z <= 0 get non-finite pixel coordinates.
        """
        points = _as_tensor(points, dtype=self.K.dtype, device=self.K.device)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"project: points must have shape [N, 3], got {tuple(points.shape)}")
        pc = torch.einsum("cij,nj->cni", self.world_to_cam[:, :3, :3], points) + self.world_to_cam[:, None, :3, 3]
        uvw = torch.einsum("cij,cnj->cni", self.K, pc)
        return uvw[..., :2] / uvw[..., 2:3], pc[..., 2]


def intrinsics(width: int, height: int, *, fov_deg: float | None = 60.0, focal: float | None = None) -> Tensor:
    """``K [3, 3]`` with square pixels and the principal point at the image centre.

    ``focal`` is in pixels; otherwise ``fov_deg`` is the vertical field of view.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if focal is None:
        if fov_deg is None or not (0.0 < fov_deg < 180.0):
            raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
        focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    if not math.isfinite(focal) or focal <= 0:
        raise ValueError(f"focal length must be positive, got {focal}")
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


look_at = Cameras.look_at
