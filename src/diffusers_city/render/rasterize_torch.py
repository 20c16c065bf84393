"""Pure-torch, differentiable reference rasterizer for 3D and 2D Gaussians (CPU or GPU).

It reproduces gsplat 1.5.3's conventions so that it can stand in for the CUDA kernels and
check them:

* 3DGS projection (Zwicker et al. EWA splatting as in Kerbl et al. 2023, Sec. 4): camera-frame
  covariance ``R S S^T R^T`` projected with the affine Jacobian (the mean direction clamped
  to 1.3x the field of view), plus the 2D blur ``eps2d`` on the diagonal; opacity-aware
  bounding radius ``ceil(min(3.33, sqrt(2 ln(255 o))) * sigma_xy)``.
* 2DGS projection (Huang et al. 2024, Sec. 4.2): the ray-splat homography ``M = K [t_u t_v p]``,
  gsplat's closed-form screen bounding box (3.33 sigma), splat-space Gaussian taken as the
  minimum of the ray-splat distance and the screen-space low-pass filter ``2 |d|^2``.
* Splats are culled outside ``(near_plane, far_plane)`` and outside the image, binned into
  16x16 pixel tiles exactly like gsplat's tile intersection, sorted front to back by camera z
  (ties by index), and composited per pixel: ``alpha = min(0.999, o exp(-sigma))``,
  skipped when ``alpha < 1/255``, stopping before the splat that would bring the
  transmittance to ``<= 1e-4`` (gsplat also skips ``sigma < 0``, which only rounding produces;
  here the exponent is clamped at 0). Depth is the expected z ``sum w z / max(alpha, 1e-10)``.

The work is vectorised over (tiles x pixels x a chunk of splats); the chunk grows
geometrically so opaque scenes stop early, and ``max_chunk_elements`` bounds memory. 3DGS
uses 8x8 tiles: with opacities <= 1 no splat reaches alpha >= 1/255 outside its
opacity-aware box, so this equals gsplat's 16x16 binning; 2DGS keeps 16x16 because its
low-pass filter reaches past the box inside a tile.

Chunking changes no (pixel, splat) decision. The exponents are elementwise tensor ops, one
pair at a time (a batched matmul would be faster, but BLAS picks its kernel, FMA use and
summation order by the matrix shape, so a pair's exponent changed with the chunk size,
by up to 3e-5 where the expanded quadratic cancels), and the transmittance is one running
product per pixel, carried in float64 from chunk to chunk on the CPU's sequential
``cumprod`` scan. So every alpha, every skip (``alpha < 1/255``), every stop (``T <= 1e-4``)
and the transmittance are bit-identical for any ``max_chunk_elements`` on the CPU; only the
weighted sums ``sum w f`` of rgb, depth and normals are summed in chunk-sized pieces
(float32 rounding, at most ``2 K 2^-24 sum w |f|`` apart for K splats of a tile).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras
from .gaussians import Gaussians, RenderOutput

TILE_SIZE = 16
ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_EPS = 1e-4
MAX_ALPHA = 0.999
RADIUS_SIGMAS = 3.33
FILTER_INV_SQUARE_2DGS = 2.0


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` (w, x, y, z), normalised first."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def _cull(means2d: Tensor, radii: Tensor, valid: Tensor, width: int, height: int) -> Tensor:
    """Integer radii ``[N, 2]``, zero for splats that are invalid or fully outside the image."""
    inside = (
        (means2d[:, 0] + radii[:, 0] > 0)
        & (means2d[:, 0] - radii[:, 0] < width)
        & (means2d[:, 1] + radii[:, 1] > 0)
        & (means2d[:, 1] - radii[:, 1] < height)
    )
    keep = valid & inside & ((radii > 0).any(dim=-1))
    return torch.where(keep[:, None], radii, torch.zeros_like(radii)).to(torch.int64)


def project_3dgs(
    g: Gaussians, w2c: Tensor, K: Tensor, width: int, height: int, eps2d: float, near_plane: float, far_plane: float
) -> dict[str, Tensor]:
    """EWA projection of 3D Gaussians for one camera (``w2c [4, 4]``, ``K [3, 3]``)."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    mean_c = g.means @ R.T + t
    x, y, z = mean_c.unbind(-1)
    depth_ok = (z >= near_plane) & (z <= far_plane)
    z = torch.where(depth_ok, z, torch.ones_like(z))  # keeps culled splats finite (and their gradients)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], -1).reshape(-1, 2, 3)
    M = quat_to_rotmat(g.quats) * g.scales[:, None, :]
    JRM = J @ R @ M  # [N, 2, 3]
    cov2d = JRM @ JRM.transpose(1, 2)
    a = cov2d[:, 0, 0] + eps2d
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    with torch.no_grad():
        opac_ok = g.opacities >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(g.opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp(max=RADIUS_SIGMAS)
        sig = torch.stack([a, c], dim=-1).clamp_min(0).sqrt()
        radii = torch.ceil(extend[:, None] * sig)
        radii = _cull(means2d.detach(), radii, depth_ok & det_ok & opac_ok, width, height)
    return {"means2d": means2d, "conics": conics, "depths": mean_c[:, 2], "radii": radii}


def project_2dgs(
    g: Gaussians, w2c: Tensor, K: Tensor, width: int, height: int, near_plane: float, far_plane: float
) -> dict[str, Tensor]:
    """Ray-splat homographies of 2D Gaussian surfels for one camera."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    mean_c = g.means @ R.T + t
    z = mean_c[:, 2]
    depth_ok = (z > near_plane) & (z < far_plane)
    rot_c = R @ quat_to_rotmat(g.quats)  # [N, 3, 3] splat axes in the camera frame
    # KWH with W H = [s_u t_u, s_v t_v, p_c]: rows M0, M1, M2 (gsplat's ray_transforms).
    WH = torch.stack([rot_c[:, :, 0] * g.scales[:, 0:1], rot_c[:, :, 1] * g.scales[:, 1:2], mean_c], dim=-1)
    Mt = K @ WH  # [N, 3, 3]
    M0, M1, M2 = Mt[:, 0], Mt[:, 1], Mt[:, 2]
    sign = torch.tensor([1.0, 1.0, -1.0], device=Mt.device, dtype=Mt.dtype)
    distance = (sign * M2 * M2).sum(-1)
    dist_ok = distance != 0
    f = sign / torch.where(dist_ok, distance, torch.ones_like(distance))[:, None]
    means2d = torch.stack([(f * M0 * M2).sum(-1), (f * M1 * M2).sum(-1)], dim=-1)
    normals = rot_c[:, :, 2]
    facing = (-(normals * mean_c).sum(-1) > 0).to(normals.dtype) * 2 - 1
    normals = normals * facing[:, None]
    with torch.no_grad():
        temp = torch.stack([(f * M0 * M0).sum(-1), (f * M1 * M1).sum(-1)], dim=-1)
        half_extend = (means2d * means2d - temp).clamp_min(1e-4)
        radii = torch.ceil(RADIUS_SIGMAS * half_extend.sqrt())
        radii = _cull(means2d.detach(), radii, depth_ok & dist_ok, width, height)
    return {"means2d": means2d, "ray_transforms": Mt, "depths": z, "radii": radii, "normals": normals}


def _pair_offsets(pix: Tensor, origin: Tensor, means2d: Tensor) -> tuple[Tensor, Tensor]:
    """``mean - pixel centre`` for every (pixel, splat) pair of a tile, ``[T, P, K]`` each.

    ``pix [T, P, 2]`` are tile-local pixel centres, ``origin [T, 1, 2]`` the tile corners
    (their sum, the image-space centre, is exact: small integers + 0.5), ``means2d [T, K, 2]``.
    """
    centre = pix + origin
    return means2d[:, None, :, 0] - centre[..., 0:1], means2d[:, None, :, 1] - centre[..., 1:2]


def _sigma_3dgs(pix: Tensor, origin: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Splat exponent ``0.5 (a dx^2 + c dy^2) + b dx dy`` (gsplat's form) for pixel centres ``pix [T, P, 2]``.

    ``origin [T, 1, 2]`` is the tile corner of the tile-local ``pix``; ``p`` holds splats
    gathered per tile ``[T, K, ...]``; ``d = mean - pixel centre``. Elementwise ops only, so
    a pair's value does not depend on how many tiles and splats are evaluated with it.
    """
    a, b, c = p["conics"][:, None].unbind(-1)  # [T, 1, K]
    dx, dy = _pair_offsets(pix, origin, p["means2d"])
    sigma = dx * ((0.5 * a) * dx + b * dy) + (0.5 * c) * dy * dy  # halving is exact: 2 passes fewer over [T, P, K]
    return sigma.clamp_min(0.0)  # the form is positive definite: negatives are rounding


def _cross(u: Tensor, v: Tensor) -> Tensor:
    """``u x v`` over the last dim from separate multiplies and subtractions (no fused multiply-add)."""
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    return torch.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], dim=-1)


def _sigma_2dgs(pix: Tensor, origin: Tensor, p: dict[str, Tensor]) -> Tensor:
    """2DGS exponent: ray-splat intersection (Huang et al. Eq. 8-10) min gsplat's low-pass filter.

    With ``h_u = x M2 - M0`` and ``h_v = y M2 - M1`` the intersection ``h_u x h_v`` is affine
    in the pixel position, ``x (m1 x m2) + y (m2 x m0) + (m0 x m1)`` with ``M`` shifted to
    tile-local pixel coordinates (smaller terms, less cancellation); the filter is
    ``2 |mean - pixel centre|^2``. Elementwise ops per (pixel, splat) pair, as in ``_sigma_3dgs``.
    """
    M = p["ray_transforms"]  # [T, K, 3, 3]
    m2 = M[..., 2, :]
    m0 = M[..., 0, :] - origin[..., 0:1] * m2  # shift to tile-local pixel coordinates
    m1 = M[..., 1, :] - origin[..., 1:2] * m2
    # (x m2 - m0) x (y m2 - m1) = x (m1 x m2) + y (m2 x m0) + (m0 x m1)   (m2 x m2 = 0)
    cx, cy, c1 = (t[:, None] for t in (_cross(m1, m2), _cross(m2, m0), _cross(m0, m1)))  # [T, 1, K, 3]
    px, py = pix[..., 0:1], pix[..., 1:2]  # [T, P, 1]
    hx, hy, hz = (px * cx[..., k] + py * cy[..., k] + c1[..., k] for k in range(3))  # [T, P, K]
    dx, dy = _pair_offsets(pix, origin, p["means2d"])
    weight_2d = FILTER_INV_SQUARE_2DGS * (dx * dx + dy * dy)
    hz_ok = hz != 0
    hz_safe = torch.where(hz_ok, hz, torch.ones_like(hz))
    su, sv = hx / hz_safe, hy / hz_safe
    sigma = 0.5 * torch.minimum(su * su + sv * sv, weight_2d)
    return torch.where(hz_ok, sigma, torch.full_like(sigma, math.inf))  # ray parallel to the splat: skipped


def _tile_lists(means2d: Tensor, radii: Tensor, depths: Tensor, tiles_x: int, tiles_y: int, tile_size: int):
    """gsplat's tile intersection: per tile, the splat ids sorted front to back.

    Returns ``(ids [n_tiles, K_max] with -1 padding, counts [n_tiles])``.
    """
    device = means2d.device
    n_tiles = tiles_x * tiles_y
    visible = torch.nonzero((radii > 0).all(dim=-1)).squeeze(1)
    if visible.numel() == 0:
        return torch.full((n_tiles, 0), -1, device=device, dtype=torch.long), torch.zeros(
            n_tiles, device=device, dtype=torch.long
        )
    m = means2d[visible].detach().float() / tile_size
    r = radii[visible].float() / tile_size
    lo_x = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    lo_y = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    hi_x = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    hi_y = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    nx, ny = hi_x - lo_x, hi_y - lo_y
    count = nx * ny
    # rank of each visible splat in front-to-back order (stable: ties keep index order)
    order = torch.sort(depths[visible].detach(), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    owner = torch.repeat_interleave(torch.arange(visible.numel(), device=device), count)
    local = torch.arange(owner.numel(), device=device) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    tile = (lo_y[owner] + local // nx[owner]) * tiles_x + lo_x[owner] + local % nx[owner]
    key = tile * visible.numel() + rank[owner]
    key, perm = torch.sort(key)
    tile, owner = tile[perm], owner[perm]
    counts = torch.bincount(tile, minlength=n_tiles)
    k_max = int(counts.max()) if counts.numel() else 0
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(tile.numel(), device=device) - start[tile]
    ids = torch.full((n_tiles, k_max), -1, device=device, dtype=torch.long)
    ids[tile, slot] = visible[owner]
    return ids, counts


def composite_tiles(
    params: dict[str, Tensor],
    opacities: Tensor,
    features: Tensor,
    sigma_fn: Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor],
    width: int,
    height: int,
    max_chunk_elements: int = 1 << 22,
    tile_size: int = TILE_SIZE,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of projected splats for one image.

    ``params`` holds per-splat tensors (``means2d``, ``radii``, ``depths`` and whatever
    ``sigma_fn`` reads), ``features [N, F]`` are blended. Splats are binned into
    ``tile_size`` tiles with gsplat's rule (16 reproduces gsplat exactly; a smaller tile is
    exact too when no splat reaches alpha >= 1/255 outside its bounding box, as for 3DGS
    with opacities <= 1). Returns ``(accumulated features [H, W, F], transmittance [H, W])``.
    """
    device, dtype = features.device, features.dtype
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles, n_pix, n_feat = tiles_x * tiles_y, tile_size * tile_size, features.shape[-1]
    ids, counts = _tile_lists(params["means2d"], params["radii"], params["depths"], tiles_x, tiles_y, tile_size)

    local = torch.arange(n_pix, device=device)
    local_pix = torch.stack([local % tile_size, local // tile_size], -1).to(dtype) + 0.5  # [P, 2]
    tile_idx = torch.arange(n_tiles, device=device)
    tile_origin = torch.stack([tile_idx % tiles_x, tile_idx // tiles_x], -1).to(dtype) * tile_size  # [n_tiles, 2]

    acc = torch.zeros(n_tiles, n_pix, n_feat, device=device, dtype=dtype)
    # transmittance before each pixel's next splat, in float64: the running product goes on exactly from chunk to chunk
    trans = torch.ones(n_tiles, n_pix, device=device, dtype=torch.float64)
    done = torch.zeros(n_tiles, n_pix, device=device, dtype=torch.bool)
    gather_keys = [k for k in params if k not in ("radii", "depths")]
    start, chunk = 0, 32
    while start < ids.shape[1]:
        active = torch.nonzero((counts > start) & ~done.all(dim=1)).squeeze(1)
        if active.numel() == 0:
            break
        chunk = max(1, min(chunk, max_chunk_elements // (active.numel() * n_pix)))
        sel = ids[active, start : start + chunk]  # [T, K]
        sel_safe = sel.clamp_min(0)
        gathered = {k: params[k][sel_safe] for k in gather_keys}  # [T, K, ...]
        opac = torch.where(sel >= 0, opacities[sel_safe], torch.zeros((), device=device, dtype=dtype))
        sigma = sigma_fn(local_pix.expand(active.numel(), -1, -1), tile_origin[active][:, None], gathered)  # [T, P, K]
        alpha = torch.clamp_max(opac[:, None] * torch.exp(-sigma), MAX_ALPHA)
        alpha = alpha * (alpha >= ALPHA_THRESHOLD)  # splats below 1/255 are skipped
        one_minus = 1.0 - alpha  # >= 0.001
        # T after each splat, one running product per pixel continued from the last chunk: on the CPU
        # cumprod is a sequential scan, so with the carried T folded into the first factor, in float64,
        # it is the same product as over all of the pixel's splats at once (float32 would round T at
        # every chunk boundary and could move a stop)
        first = one_minus[..., 0].to(torch.float64) * trans[active]
        factors = one_minus.to(torch.float64, copy=True)  # a copy also for float64 renders: it is written next
        factors[..., 0] = first
        t64 = torch.cumprod(factors, dim=-1)
        t_after = t64.to(dtype)
        # the splat that would bring T to <= 1e-4 and all behind it are excluded (gsplat); finished pixels take nothing
        keep = (t_after > TRANSMITTANCE_EPS) & ~done[active][..., None]
        w = torch.where(keep, alpha * (t_after / one_minus), torch.zeros((), device=device, dtype=dtype))
        acc = acc.index_copy(0, active, acc[active] + w @ features[sel_safe])
        # T falls along the splats, so the kept ones are a prefix: T after the last of them
        n_keep = keep.sum(-1, keepdim=True)
        t_last = t64.gather(-1, (n_keep - 1).clamp_min(0)).squeeze(-1)
        trans = trans.index_copy(0, active, torch.where(n_keep[..., 0] > 0, t_last, trans[active]))
        done = done.index_copy(0, active, done[active] | ~keep[..., -1])
        start += chunk
        chunk *= 2

    def to_image(x: Tensor) -> Tensor:
        x = x.reshape(tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile_size, tiles_x * tile_size, -1)[:height, :width]

    return to_image(acc), to_image(trans.to(dtype)[..., None])[..., 0]


def rasterize_torch(
    g: Gaussians,
    cameras: Cameras,
    mode: str,
    background: Tensor,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    max_chunk_elements: int = 1 << 22,
) -> RenderOutput:
    """Render ``g`` from each camera with the torch reference (see the module docstring)."""
    width, height = cameras.width, cameras.height
    rgbs, depths, alphas, normals = [], [], [], []
    for c in range(len(cameras)):
        w2c, K = cameras.world_to_cam[c], cameras.K[c]
        if mode == "3dgs":
            proj = project_3dgs(g, w2c, K, width, height, eps2d, near_plane, far_plane)
            feats = torch.cat([g.colors, proj["depths"][:, None]], dim=-1)
            sigma_fn, tile_size = _sigma_3dgs, 8
        else:
            proj = project_2dgs(g, w2c, K, width, height, near_plane, far_plane)
            feats = torch.cat([g.colors, proj["depths"][:, None], proj.pop("normals")], dim=-1)
            sigma_fn, tile_size = _sigma_2dgs, TILE_SIZE
        acc, trans = composite_tiles(proj, g.opacities, feats, sigma_fn, width, height, max_chunk_elements, tile_size)
        alpha = 1.0 - trans[..., None]
        rgbs.append(acc[..., :3] + trans[..., None] * background[c])
        depths.append(acc[..., 3:4] / alpha.clamp_min(1e-10))
        alphas.append(alpha)
        if mode == "2dgs":
            normals.append(acc[..., 4:7] @ w2c[:3, :3])  # camera -> world: R^T n
    return RenderOutput(
        rgb=torch.stack(rgbs),
        depth=torch.stack(depths),
        alpha=torch.stack(alphas),
        normal=torch.stack(normals) if normals else None,
    )
