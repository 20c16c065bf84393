"""gsplat 1.5.3 CUDA backend of ``render_gaussians`` (``rasterization`` / ``rasterization_2dgs``)."""

from __future__ import annotations

import os
import tempfile

from filelock import FileLock
from torch import Tensor

from .cameras import Cameras
from .gaussians import Gaussians, RenderOutput

_BACKEND_LOADED = False


def load_gsplat_backend() -> None:
    """Import gsplat's CUDA extension, once per process, under a lock shared by the machine's
    processes. Its first import on a machine compiles it (minutes), and gsplat starts that build
    by deleting its build folder, so processes importing it at once (DDP ranks, test workers)
    break each other's build (gsplat#297); under the lock the first builds, the rest load."""
    global _BACKEND_LOADED
    if not _BACKEND_LOADED:
        with FileLock(os.path.join(tempfile.gettempdir(), "diffusers_city_gsplat_build.lock")):
            import gsplat.cuda._backend  # noqa: F401
        _BACKEND_LOADED = True


def rasterize_gsplat(
    g: Gaussians,
    cameras: Cameras,
    mode: str,
    background: Tensor,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render with gsplat's fused CUDA kernels in ``"RGB+ED"`` mode (classic, non-antialiased)."""
    import gsplat

    load_gsplat_backend()

    C = len(cameras)
    common = dict(
        means=g.means.contiguous(),
        quats=g.quats.contiguous(),
        scales=g.scales.contiguous(),
        opacities=g.opacities.contiguous(),
        viewmats=cameras.world_to_cam.contiguous(),
        Ks=cameras.K.contiguous(),
        width=cameras.width,
        height=cameras.height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        render_mode="RGB+ED",
    )
    if mode == "3dgs":
        # gsplat appends the zero depth background itself; its packed mode (the default)
        # rejects per-camera backgrounds, so rasterize unpacked.
        colors, alphas, _ = gsplat.rasterization(
            colors=g.colors.contiguous(), backgrounds=background.contiguous(), packed=False, **common
        )
        normal = None
    else:
        # rasterization_2dgs wants per-camera colours [C, N, 3].
        colors_c = g.colors[None].expand(C, -1, -1).contiguous()
        colors, alphas, normal, _, _, _, _ = gsplat.rasterization_2dgs(
            colors=colors_c, backgrounds=background.contiguous(), **common
        )
    return RenderOutput(rgb=colors[..., :3], depth=colors[..., 3:4], alpha=alphas, normal=normal)
