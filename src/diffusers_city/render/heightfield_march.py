"""First hits of camera rays with an extruded height field (GaussianCity's visibility, Eq. 2).

Maximum-mipmap traversal (Tevs et al. 2008): each ray holds a level of a max-height pyramid;
while its lowest z inside its current cell stays above the cell's max top it jumps to the cell's
exit and goes up a level, otherwise it goes down a level, and at level 0 that is a hit.

Two implementations of one traversal: ``traverse_triton``, one Triton kernel in which every ray
loops on its own (the CUDA path: a frame's rays cost one launch), and ``traverse_torch``, all
rays stepping in lockstep as a fixed set of elementwise torch ops (the CPU path, and the reference
the kernel is tested against on the GPU). :func:`march` picks the kernel for CUDA tensors when
Triton imports. Both run in float64 with the same operations (no fused multiply-add), so they
return the same hits.
"""

from __future__ import annotations

import math

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

__all__ = ["march", "slab", "traverse_torch", "traverse_triton", "triton_available"]

Pyramid = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(buffer, offsets, widths)``: the levels of a max mipmap flattened into one buffer."""
Hits = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(hit [R] bool, pixel [R] long, level [R] long)`` per ray."""

_EPS_ENTER = 1e-6  # start just inside the slab
_EPS_STEP = 1e-5  # step past a cell's exit


def slab(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray parameter interval inside the box ``[lo, hi]`` (per axis; an infinite bound disables it)."""
    with torch.no_grad():
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t1 = (lo - o) * inv
        t2 = (hi - o) * inv
        tn = torch.minimum(t1, t2).nan_to_num(-math.inf)
        tf = torch.maximum(t1, t2).nan_to_num(math.inf)
        return tn.amax(1), tf.amin(1)


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device``."""
    return triton is not None and device.type == "cuda"


def march(
    o: torch.Tensor,
    d: torch.Tensor,
    top: torch.Tensor,
    pyramid: Pyramid,
    tmax: float,
    use_triton: bool | None = None,
    sync_every: int = 8,
) -> Hits:
    """First hit of each ray with the extruded height field ``top`` (window-local voxel units).

    Args:
        o, d: ``[R, 3]`` float64 ray origins and unit directions.
        top: ``[H, W]`` column tops.
        pyramid: ``(buffer, offsets, widths)`` max mipmap of ``top`` (``bev._max_pyramid``).
        tmax: rays stop after this parameter.
        use_triton: force the kernel (True) or the torch path (False); default: the kernel on CUDA.
        sync_every: torch path only, steps between compactions of the finished rays.

    Returns ``(hit [R] bool, pixel [R] long flat index, level [R] long)``: the hit pixel and the
    height level at which the ray enters its column (its top where it lands on the top face).
    """
    hc, wc = top.shape
    device = o.device
    n = o.shape[0]
    # The slab's top is read on the device: no host sync.
    hi = torch.cat(
        [torch.tensor([float(wc), float(hc)], dtype=o.dtype).to(device, non_blocking=True), top.max().to(o.dtype)[None] + 1.0]
    )
    lo = torch.tensor([0.0, 0.0, -math.inf], dtype=o.dtype).to(device, non_blocking=True)
    tn, tf = slab(o, d, lo, hi)
    tn = tn.clamp(min=0.0) + _EPS_ENTER
    tf = tf.clamp(max=tmax)
    if triton_available(device) if use_triton is None else use_triton:
        return traverse_triton(o, d, tn, tf, pyramid, (hc, wc))  # rays missing the slab are never live
    # The lockstep path marches only the rays that meet the slab.
    hit = torch.zeros(n, dtype=torch.bool, device=device)
    pixel = torch.zeros(n, dtype=torch.long, device=device)
    level = torch.zeros(n, dtype=torch.long, device=device)
    index = torch.nonzero(tf > tn).squeeze(1)
    if index.numel():
        args = (o[index], d[index], tn[index], tf[index], pyramid, (hc, wc))
        hit[index], pixel[index], level[index] = traverse_torch(*args, sync_every=sync_every)
    return hit, pixel, level


def _start_level(offsets: torch.Tensor) -> int:
    """Pyramid level every ray starts at: 3 (8 x 8 pixel blocks), or the top of a shallower pyramid."""
    return min(offsets.numel() - 1, 3)


def traverse_torch(o, d, t, tf, pyramid: Pyramid, shape: tuple[int, int], sync_every: int = 8) -> Hits:
    """Lockstep traversal of rays ``o + s d`` (``[M, 3]`` float64) that enter the slab at
    ``s = t`` and leave it at ``tf`` (``[M]``), over a ``shape = (H, W)`` height field.

    Every step is a fixed set of elementwise ops without host sync; every ``sync_every`` steps the
    finished rays are counted (the one sync) and dropped once they are half of the rays.
    """
    hc, wc = shape
    device = o.device
    buffer, offsets, widths = pyramid
    top_level = offsets.numel() - 1
    m = o.shape[0]
    hit = torch.zeros(m, dtype=torch.bool, device=device)
    pixel = torch.zeros(m, dtype=torch.long, device=device)
    level = torch.zeros(m, dtype=torch.long, device=device)
    index = torch.arange(m, device=device)
    sign = (d[:, :2] > 0).to(o.dtype)
    inv = 1.0 / torch.where(d[:, :2].abs() < 1e-12, torch.full_like(d[:, :2], 1e-12), d[:, :2])
    lvl = torch.full((m,), _start_level(offsets), dtype=torch.long, device=device)
    live = t < tf
    r_hit, r_pixel, r_level = (torch.zeros(m, dtype=dt, device=device) for dt in (torch.bool, torch.long, torch.long))
    step = 0
    while index.numel():
        p = o + d * t[:, None]
        cx = torch.clamp(p[:, 0].floor().long(), 0, wc - 1)
        cy = torch.clamp(p[:, 1].floor().long(), 0, hc - 1)
        ccx, ccy = torch.bitwise_right_shift(cx, lvl), torch.bitwise_right_shift(cy, lvl)
        cell = torch.bitwise_left_shift(torch.ones_like(lvl), lvl).to(o.dtype)[:, None]
        cb = torch.stack([ccx, ccy], 1).to(o.dtype) * cell
        tc = torch.minimum((((cb + sign * cell) - o[:, :2]) * inv).amin(1), tf)
        zc = torch.minimum(p[:, 2], o[:, 2] + d[:, 2] * tc)
        cell_top = buffer[offsets[lvl] + ccy * widths[lvl] + ccx]
        above = zc > cell_top
        is_hit = live & ~above & (lvl == 0)
        r_hit = r_hit | is_hit
        r_pixel = torch.where(is_hit, cy * wc + cx, r_pixel)
        r_level = torch.where(is_hit, torch.minimum(cell_top.long(), torch.ceil(p[:, 2] - 1e-6).long()), r_level)
        t = torch.where(above, torch.maximum(tc, t) + _EPS_STEP, t)
        lvl = torch.where(above, (lvl + 1).clamp(max=top_level), (lvl - 1).clamp(min=0))
        live = live & ~is_hit & (t < tf)
        step += 1
        if step % sync_every == 0 and 2 * int(live.sum()) <= live.numel():
            done = ~live
            hit[index[done]], pixel[index[done]], level[index[done]] = r_hit[done], r_pixel[done], r_level[done]
            keep = torch.nonzero(live).squeeze(1)
            index, t, tf, o, d, sign, inv, lvl, live, r_hit, r_pixel, r_level = (
                v[keep] for v in (index, t, tf, o, d, sign, inv, lvl, live, r_hit, r_pixel, r_level)
            )
    return hit, pixel, level


if triton is not None:

    @triton.jit
    def _traverse_kernel(
        o_ptr,
        d_ptr,
        t_ptr,
        tf_ptr,
        buf_ptr,
        off_ptr,
        width_ptr,
        hit_ptr,
        pixel_ptr,
        level_ptr,
        n,
        wc,
        hc,
        top_level,
        start_level,
        BLOCK: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inb = r < n
        ox = tl.load(o_ptr + r * 3, mask=inb, other=0.0)
        oy = tl.load(o_ptr + r * 3 + 1, mask=inb, other=0.0)
        oz = tl.load(o_ptr + r * 3 + 2, mask=inb, other=0.0)
        dx = tl.load(d_ptr + r * 3, mask=inb, other=1.0)
        dy = tl.load(d_ptr + r * 3 + 1, mask=inb, other=1.0)
        dz = tl.load(d_ptr + r * 3 + 2, mask=inb, other=1.0)
        t = tl.load(t_ptr + r, mask=inb, other=0.0)
        tf = tl.load(tf_ptr + r, mask=inb, other=0.0)
        sx = (dx > 0).to(tl.float64)
        sy = (dy > 0).to(tl.float64)
        ix = 1.0 / tl.where(tl.abs(dx) < 1e-12, 1e-12, dx)
        iy = 1.0 / tl.where(tl.abs(dy) < 1e-12, 1e-12, dy)
        lvl = tl.zeros([BLOCK], dtype=tl.int64) + start_level
        live = inb & (t < tf)
        hit = tl.zeros([BLOCK], dtype=tl.int32)
        pixel = tl.zeros([BLOCK], dtype=tl.int64)
        level = tl.zeros([BLOCK], dtype=tl.int64)
        one = tl.full([BLOCK], 1, dtype=tl.int64)
        any_live = tl.max(live.to(tl.int32), axis=0)
        while any_live > 0:
            px = ox + dx * t
            py = oy + dy * t
            pz = oz + dz * t
            cx = tl.minimum(tl.maximum(tl.floor(px).to(tl.int64), 0), wc - 1)
            cy = tl.minimum(tl.maximum(tl.floor(py).to(tl.int64), 0), hc - 1)
            ccx = cx >> lvl
            ccy = cy >> lvl
            cell = (one << lvl).to(tl.float64)
            tcx = ((ccx.to(tl.float64) * cell + sx * cell) - ox) * ix
            tcy = ((ccy.to(tl.float64) * cell + sy * cell) - oy) * iy
            tc = tl.minimum(tl.minimum(tcx, tcy), tf)
            zc = tl.minimum(pz, oz + dz * tc)
            base = tl.load(off_ptr + lvl, mask=live, other=0)
            width = tl.load(width_ptr + lvl, mask=live, other=0)
            cell_top = tl.load(buf_ptr + base + ccy * width + ccx, mask=live, other=0.0)
            above = zc > cell_top
            is_hit = live & (above == 0) & (lvl == 0)
            hit = tl.where(is_hit, 1, hit)
            pixel = tl.where(is_hit, cy * wc + cx, pixel)
            entry = tl.minimum(cell_top.to(tl.int64), tl.ceil(pz - 1e-6).to(tl.int64))
            level = tl.where(is_hit, entry, level)
            t = tl.where(above, tl.maximum(tc, t) + 1e-5, t)
            lvl = tl.where(above, tl.minimum(lvl + 1, top_level), tl.maximum(lvl - 1, 0))
            live = live & (is_hit == 0) & (t < tf)
            any_live = tl.max(live.to(tl.int32), axis=0)
        tl.store(hit_ptr + r, hit.to(tl.int8), mask=inb)
        tl.store(pixel_ptr + r, pixel, mask=inb)
        tl.store(level_ptr + r, level, mask=inb)


def traverse_triton(o, d, t, tf, pyramid: Pyramid, shape: tuple[int, int], block: int = 128) -> Hits:
    """:func:`traverse_torch` as one Triton kernel launch (CUDA only, ``block`` rays per program)."""
    if not triton_available(o.device):
        raise RuntimeError("traverse_triton needs Triton and CUDA tensors; use traverse_torch")
    hc, wc = shape
    buffer, offsets, widths = pyramid
    m = o.shape[0]
    hit = torch.empty(m, dtype=torch.int8, device=o.device)
    pixel = torch.empty(m, dtype=torch.long, device=o.device)
    level = torch.empty(m, dtype=torch.long, device=o.device)
    f64 = {"dtype": torch.float64}
    _traverse_kernel[(triton.cdiv(m, block),)](
        o.to(**f64).contiguous(),
        d.to(**f64).contiguous(),
        t.to(**f64).contiguous(),
        tf.to(**f64).contiguous(),
        buffer.to(**f64).contiguous(),
        offsets.long().contiguous(),
        widths.long().contiguous(),
        hit,
        pixel,
        level,
        m,
        wc,
        hc,
        offsets.numel() - 1,
        _start_level(offsets),
        BLOCK=block,
        enable_fp_fusion=False,
    )
    return hit.bool(), pixel, level
