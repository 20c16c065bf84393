"""Parity and speed of diffusers_city's pure-torch Gaussian rasterizer against gsplat 1.5.3.

For 3DGS and 2DGS, on (a) random Gaussians in a blob and (b) a city-like surface (Gaussians
on the points of ``diffusers_city.data.procedural_city`` when it imports, else on a
self-contained extruded-box city), seen by several cameras (orbit, drone, street level),
renders with ``backend="torch"`` and ``backend="gsplat"`` and reports PSNR of rgb and alpha
(>= 40 dB required), depth error, gradient agreement (cosine similarity) and ms per frame.
Also times the torch reference on the CPU at 128x96 with 20k city Gaussians (2 threads, as
in the GaussianCity CPU demo).

    PYTHONPATH=src python benchmarks/render_parity.py --out DIR            # GPU: torch vs gsplat
    PYTHONPATH=src python benchmarks/render_parity.py --out DIR --device cpu --quick
        # CPU check of the script: the torch path against itself with tiny chunks

Writes ``DIR/render_parity.json`` and ``DIR/render_parity.md``; prints a short table last.
Exit status 1 when a case fails the 40 dB bar or errors.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from diffusers_city.export import write_text_atomic
from diffusers_city.render import (
    Cameras,
    Gaussians,
    drone_trajectory,
    orbit_trajectory,
    render_gaussians,
    street_trajectory,
)

PSNR_BAR = 40.0


# ------------------------------------------------------------------------------------------
# scenes
def random_blob(n: int, seed: int) -> tuple[Gaussians, Cameras, str]:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen) * torch.tensor([2.0, 2.0, 1.0])
    g = Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=gen),
        scales=torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.25), generator=gen)),
        opacities=torch.empty(n).uniform_(0.05, 1.0, generator=gen),
        colors=torch.rand(n, 3, generator=gen),
    )
    return g, None, "random blob"


def synthetic_city(seed: int, size_m: float = 96.0, mpp: float = 1.0) -> SimpleNamespace:
    """Extruded-box city raster with a road grid: height, semantic, points, colours, normals."""
    rng = np.random.default_rng(seed)
    n = int(size_m / mpp)
    height = np.zeros((n, n), np.float32)
    semantic = np.zeros((n, n), np.int64)
    road = np.zeros((n, n), bool)
    for k in range(0, n, max(8, n // 4)):
        road[k : k + 4, :] = True
        road[:, k : k + 4] = True
    semantic[road] = 1
    for _ in range(n // 3):
        i, j = rng.integers(0, n - 6, size=2)
        hh, ww = rng.integers(4, 14, size=2)
        block = (slice(i, min(n, i + hh)), slice(j, min(n, j + ww)))
        free = ~road[block]
        height[block][free] = np.maximum(height[block][free], rng.uniform(4.0, 30.0))
        semantic[block][free] = 3
    pts, nrm, cls = [], [], []
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    sub = np.array([0.25, 0.75]) * mpp  # 2 x 2 samples per pixel on tops
    for du in sub:
        for dv in sub:
            pts.append(np.stack([jj.ravel() * mpp + du, ii.ravel() * mpp + dv, height.ravel()], -1))
            nrm.append(np.tile([0.0, 0.0, 1.0], (n * n, 1)))
            cls.append(semantic.ravel())
    for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1)):  # facades where the neighbour is lower
        nb = np.roll(height, -sign, axis=axis)
        drop = height - nb
        drop[(-1 if sign > 0 else 0, slice(None)) if axis == 0 else (slice(None), -1 if sign > 0 else 0)] = 0
        wi, wj = np.nonzero(drop > 0.5)
        for w_i, w_j in zip(wi, wj):
            zs = np.arange(height[w_i, w_j] - 0.5 * mpp, nb[w_i, w_j], -0.5 * mpp)
            x = (w_j + 0.5) * mpp + (0.5 * mpp * sign if axis == 1 else 0.0)
            y = (w_i + 0.5) * mpp + (0.5 * mpp * sign if axis == 0 else 0.0)
            for off in (-0.25 * mpp, 0.25 * mpp):
                px = x + (off if axis == 0 else 0.0)
                py = y + (off if axis == 1 else 0.0)
                pts.append(np.stack([np.full_like(zs, px), np.full_like(zs, py), zs], -1))
                normal = [0.0, 0.0, 0.0]
                normal[1 - axis] = float(sign)
                nrm.append(np.tile(normal, (len(zs), 1)))
                cls.append(np.full(len(zs), 2))
    points = np.concatenate(pts).astype(np.float32)
    normals = np.concatenate(nrm).astype(np.float32)
    classes = np.concatenate(cls)
    palette = np.array([[0.45, 0.5, 0.35], [0.3, 0.3, 0.32], [0.75, 0.7, 0.6], [0.6, 0.35, 0.3]])
    colors = palette[classes] * rng.uniform(0.85, 1.15, size=(len(points), 1))
    return SimpleNamespace(
        height=height,
        semantic=semantic,
        meters_per_pixel=mpp,
        origin=(0.0, 0.0, 0.0),
        ground=None,
        points=points,
        normals=normals,
        colors=np.clip(colors, 0, 1).astype(np.float32),
    )


def city_scene(seed: int, quick: bool):
    size = 48.0 if quick else 128.0
    try:
        from diffusers_city.data import procedural_city

        scene = procedural_city(seed, size_m=size, meters_per_pixel=1.0, points_per_m2=4)
        if scene.points is None:
            raise ValueError("procedural_city returned no points")
        source = "procedural_city"
    except Exception as exc:  # the data layer may be absent or older: fall back to the built-in city
        print(f"[render_parity] procedural_city unavailable ({type(exc).__name__}: {exc}); using synthetic city")
        scene, source = synthetic_city(seed, size_m=size, mpp=1.0), "synthetic extruded boxes"
    return scene, source


def city_gaussians(scene, max_points: int, seed: int) -> Gaussians:
    pts = np.asarray(scene.points, np.float32)
    cols = np.asarray(scene.colors, np.float32) if scene.colors is not None else np.full_like(pts, 0.6)
    nrm = np.asarray(scene.normals, np.float32) if getattr(scene, "normals", None) is not None else None
    if len(pts) > max_points:
        keep = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
        pts, cols = pts[keep], cols[keep]
        nrm = nrm[keep] if nrm is not None else None
    spacing = math.sqrt(float(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1])) / len(pts))
    scale = torch.tensor([1.0, 1.0, 0.15]) * 0.6 * max(spacing, 0.2)
    return Gaussians.from_points(
        torch.from_numpy(pts),
        torch.from_numpy(cols).clamp(0, 1),
        scale=scale,
        opacity=0.95,
        normals=torch.from_numpy(nrm) if nrm is not None else None,
    )


def blob_cameras(width: int, height: int, n: int) -> Cameras:
    ang = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    eye = torch.stack([7 * torch.cos(ang), 7 * torch.sin(ang), 2.5 + torch.sin(3 * ang)], -1)
    return Cameras.look_at(eye, torch.zeros(n, 3), width=width, height=height, fov_deg=55.0)


def city_cameras(scene, width: int, height: int, quick: bool) -> Cameras:
    cams = [
        orbit_trajectory(scene, 2 if quick else 4, width=width, height=height),
        drone_trajectory(scene, 1 if quick else 2, seed=1, width=width, height=height),
    ]
    try:
        cams.append(street_trajectory(scene, 1 if quick else 2, seed=2, width=width, height=height))
    except ValueError as exc:
        print(f"[render_parity] no street cameras: {exc}")
    return Cameras.cat(cams)


# ------------------------------------------------------------------------------------------
# measurements
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).square().mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[object, float]:
    out = fn()  # warm-up (and the result)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def grad_cosines(g: Gaussians, cams: Cameras, mode: str, ref_kw: dict, test_kw: dict) -> dict[str, float]:
    """Cosine similarity of d(loss)/d(params) between the two renderers."""
    weights = torch.rand(len(cams), cams.height, cams.width, 3, generator=torch.Generator().manual_seed(0)).to(g.device)
    grads = []
    for kw in (ref_kw, test_kw):
        params = {k: getattr(g, k).detach().clone().requires_grad_(True) for k in Gaussians._fields()}
        out = render_gaussians(Gaussians(**params), cams, mode=mode, **kw)
        ((out.rgb * weights).sum() + out.alpha.sum()).backward()
        grads.append({k: v.grad.flatten() for k, v in params.items()})
    return {k: float(torch.nn.functional.cosine_similarity(grads[0][k], grads[1][k], dim=0)) for k in grads[0]}


def compare(name: str, g: Gaussians, cams: Cameras, mode: str, device: torch.device, args) -> dict:
    ref_kw = {"backend": "torch", "background": [0.2, 0.3, 0.4]}
    if device.type == "cuda":
        test_kw, test_name = {"backend": "gsplat", "background": [0.2, 0.3, 0.4]}, "gsplat"
    else:
        test_kw, test_name = {**ref_kw, "max_chunk_elements": 1 << 14}, "torch(small chunks)"
    g, cams = g.to(device), cams.to(device)
    with torch.no_grad():
        ref, t_ref = timed(lambda: render_gaussians(g, cams, mode=mode, **ref_kw), device, args.repeats)
        out, t_test = timed(lambda: render_gaussians(g, cams, mode=mode, **test_kw), device, args.repeats)
    both = (ref.alpha > 0.5) & (out.alpha > 0.5)
    dz = (ref.depth - out.depth).abs()[both]
    rel = dz / ref.depth[both].clamp_min(1e-6)
    row = {
        "scene": name,
        "mode": mode,
        "against": test_name,
        "gaussians": len(g),
        "cameras": len(cams),
        "size": f"{cams.width}x{cams.height}",
        "psnr_rgb": psnr(ref.rgb, out.rgb),
        "psnr_alpha": psnr(ref.alpha, out.alpha),
        "max_abs_rgb": float((ref.rgb - out.rgb).abs().max()),
        "depth_mae_m": float(dz.mean()) if dz.numel() else 0.0,
        "depth_rel_p99": float(rel.quantile(0.99)) if rel.numel() else 0.0,
        "coverage": float((ref.alpha > 0.5).float().mean()),
        "ms_per_frame_torch": 1000 * t_ref / len(cams),
        f"ms_per_frame_{test_name.split('(')[0]}": 1000 * t_test / len(cams),
    }
    if mode == "2dgs" and ref.normal is not None and out.normal is not None:
        row["psnr_normal"] = psnr(ref.normal * 0.5, out.normal * 0.5)
    if args.grads:
        small = g[: min(len(g), args.grad_gaussians)]
        row["grad_cosine"] = grad_cosines(small, cams[:1], mode, ref_kw, test_kw)
    row["pass"] = bool(row["psnr_rgb"] >= PSNR_BAR and row["psnr_alpha"] >= PSNR_BAR)
    return row


def cpu_demo_timing(city, n: int = 20000, threads: int = 2) -> dict:
    """The GaussianCity CPU demo budget: 128x96 frames of ~20k Gaussians on 2 threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = city_gaussians(city, n, seed=0)
        cams = orbit_trajectory(city, 4, width=128, height=96)
        res = {}
        for mode in ("3dgs", "2dgs"):
            with torch.no_grad():
                _, t = timed(lambda: render_gaussians(g, cams, mode=mode, backend="torch"), torch.device("cpu"), 1)
            res[mode] = {"s_per_frame": t / len(cams), "gaussians": len(g), "size": "128x96", "threads": threads}
        return res
    finally:
        torch.set_num_threads(old)


def markdown(rows: list[dict], cpu: dict) -> str:
    cols = [
        "scene",
        "mode",
        "against",
        "gaussians",
        "cameras",
        "size",
        "psnr_rgb",
        "psnr_alpha",
        "psnr_normal",
        "max_abs_rgb",
        "depth_mae_m",
        "depth_rel_p99",
        "coverage",
        "ms_per_frame_torch",
        "ms_per_frame_gsplat",
        "ms_per_frame_torch(small chunks)",
        "pass",
    ]
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    grads = [r for r in rows if "grad_cosine" in r]
    if grads:
        keys = list(grads[0]["grad_cosine"])
        lines += [
            "",
            "Gradient cosine similarity (torch reference vs the other renderer):",
            "",
            "| scene | mode | " + " | ".join(keys) + " |",
            "|" + "---|" * (len(keys) + 2),
        ]
        lines += [f"| {r['scene']} | {r['mode']} | " + " | ".join(fmt(r["grad_cosine"][k]) for k in keys) + " |" for r in grads]
    if cpu:
        lines += ["", "CPU torch reference (GaussianCity demo budget):", ""]
        lines += [
            f"- {m}: {v['s_per_frame']:.3f} s/frame, {v['gaussians']} Gaussians, {v['size']}, {v['threads']} threads"
            for m, v in cpu.items()
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU check of the script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-grads", dest="grads", action="store_false", help="skip the gradient comparison")
    parser.add_argument("--grad-gaussians", type=int, default=4000)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available (use --device cpu --quick for a CPU check)")
    if args.device == "cuda":
        try:
            import gsplat  # noqa: F401
        except ImportError as exc:
            raise ValueError("--device cuda needs gsplat 1.5.3 installed") from exc
    args.out.mkdir(parents=True, exist_ok=True)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    if args.quick:
        args.grad_gaussians = min(args.grad_gaussians, 300)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    w, h = (48, 32) if args.quick else (320, 240)
    n_blob = 1500 if args.quick else 20000
    n_city = 3000 if args.quick else 150000
    city, city_source = city_scene(args.seed, args.quick)
    cases = [
        ("random blob", random_blob(n_blob, args.seed)[0], blob_cameras(w, h, 2 if args.quick else 4)),
        (f"city ({city_source})", city_gaussians(city, n_city, args.seed), city_cameras(city, w, h, args.quick)),
    ]
    rows, failures = [], 0
    for name, g, cams in cases:
        for mode in ("3dgs", "2dgs"):
            try:
                row = compare(name, g, cams, mode, device, args)
            except Exception as exc:
                traceback.print_exc()
                row = {"scene": name, "mode": mode, "error": f"{type(exc).__name__}: {exc}", "pass": False}
            failures += not row["pass"]
            rows.append(row)
            print(
                f"[render_parity] {name} {mode}: "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k not in ("scene", "mode")
                )
            )
    cpu = {}
    try:
        cpu = cpu_demo_timing(city, n=2000 if args.quick else 20000)
    except Exception as exc:
        traceback.print_exc()
        cpu = {"error": {"s_per_frame": float("nan"), "gaussians": 0, "size": str(exc), "threads": 0}}

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "quick": args.quick,
    }
    try:
        import gsplat

        env["gsplat"] = gsplat.__version__
    except ImportError:
        env["gsplat"] = None
    write_text_atomic(args.out / "render_parity.json", json.dumps({"env": env, "rows": rows, "cpu_demo": cpu}, indent=2))
    write_text_atomic(args.out / "render_parity.md", f"# render parity ({env})\n\n" + markdown(rows, cpu))

    print("\nscene                         mode  psnr_rgb psnr_alpha depth_mae  ms_torch  ms_other  pass")
    for r in rows:
        other = next((v for k, v in r.items() if k.startswith("ms_per_frame_") and k != "ms_per_frame_torch"), float("nan"))
        print(
            f"{r['scene'][:29]:29s} {r['mode']:5s} {r.get('psnr_rgb', float('nan')):8.2f} "
            f"{r.get('psnr_alpha', float('nan')):10.2f} {r.get('depth_mae_m', float('nan')):9.2e} "
            f"{r.get('ms_per_frame_torch', float('nan')):9.1f} {other:9.1f}  {'PASS' if r['pass'] else 'FAIL'}"
            + (f"  {r['error']}" if "error" in r else "")
        )
    for m, v in cpu.items():
        print(f"cpu torch {m}: {v['s_per_frame']:.3f} s/frame ({v['gaussians']} Gaussians, {v['size']}, {v['threads']} threads)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
