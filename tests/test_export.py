"""Writers: round trips through independent readers (plyfile, laspy, trimesh, imageio),
atomicity, georeference and bad input rejected before any file is written."""

import json

import imageio.v3 as iio
import laspy
import numpy as np
import pytest
import trimesh
from plyfile import PlyData

from diffusers_city.data import FACADE, ROOF, VEHICLE
from diffusers_city.data.readers import read_point_cloud
from diffusers_city.export import (
    SH_C0,
    atomic_write,
    mesh_from_points,
    mesh_from_voxels,
    read_gaussian_ply,
    write_gaussian_ply,
    write_las,
    write_mesh,
    write_point_ply,
    write_preview,
    write_video,
)

WKT = 'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'  # noqa: E501


@pytest.fixture
def cloud():
    rng = np.random.default_rng(0)
    n = 500
    points = rng.random((n, 3)) * [40, 30, 12] + [500100.0, 4649000.0, 80.0]
    colors = rng.random((n, 3))
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    classes = rng.integers(0, 8, n).astype(np.uint8)
    return points, colors, normals, classes


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "missing" / "x.bin"):
            pass


def test_point_ply_layout_and_round_trip(tmp_path, cloud):
    points, colors, normals, classes = cloud
    path = write_point_ply(tmp_path / "p.ply", points, colors, normals, classes, crs=WKT)
    ply = PlyData.read(str(path))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    assert [p.name for p in ply["vertex"].properties] == ["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue", "class"]
    assert ply["vertex"].data.dtype["x"] == np.dtype("<f4") and ply["vertex"].data.dtype["red"] == np.dtype("u1")
    back = read_point_cloud(path)
    assert back.crs == WKT
    # large UTM coordinates keep millimetre precision thanks to the recorded offset
    np.testing.assert_allclose(back.points, points, atol=2e-3)
    np.testing.assert_allclose(back.colors, np.round(colors * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(back.normals, normals, atol=1e-6)
    np.testing.assert_array_equal(back.classes, classes)


def test_gaussian_ply_standard_layout_and_round_trip(tmp_path, cloud):
    points, colors, _, _ = cloud
    n = len(points)
    rng = np.random.default_rng(1)
    scales = rng.random((n, 3)) * 0.5 + 0.05
    quats = rng.normal(size=(n, 4))
    opac = rng.random(n) * 0.9 + 0.05
    path = write_gaussian_ply(tmp_path / "g.ply", points, colors, scales, opac, quats, crs="EPSG:32633")
    names = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    raw = PlyData.read(str(path))["vertex"].data
    np.testing.assert_allclose(raw["f_dc_0"], (colors[:, 0] - 0.5) / SH_C0, rtol=1e-5)
    np.testing.assert_allclose(raw["opacity"], np.log(opac / (1 - opac)), rtol=1e-5)
    g = read_gaussian_ply(path)
    assert g.sh_degree == 3 and g.crs == "EPSG:32633"
    np.testing.assert_allclose(g.means, points, atol=2e-3)
    np.testing.assert_allclose(g.colors, colors, atol=1e-5)
    np.testing.assert_allclose(g.scales, scales, rtol=1e-5)
    np.testing.assert_allclose(g.opacities, opac, atol=1e-5)
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    np.testing.assert_allclose(g.quats, q, atol=1e-6)
    small = read_gaussian_ply(write_gaussian_ply(tmp_path / "g0.ply", points, colors, 0.1, sh_degree=0))
    assert small.sh_degree == 0 and np.allclose(small.quats, [1, 0, 0, 0]) and np.allclose(small.scales, 0.1)


def test_las_and_laz_round_trip(tmp_path, cloud):
    points, colors, _, classes = cloud
    for suffix in (".las", ".laz"):
        path = write_las(tmp_path / f"p{suffix}", points, colors, classes, crs=WKT)
        las = laspy.read(str(path))
        assert las.header.point_format.id == 7 and las.header.global_encoding.wkt
        np.testing.assert_allclose(np.stack([las.x, las.y, las.z], 1), points, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(las.red), np.round(colors[:, 0] * 65535))
        asprs = np.asarray(las.classification)
        assert set(asprs[np.isin(classes, (ROOF, FACADE))]) == {6} and set(asprs[classes == VEHICLE]) <= {1}
        back = read_point_cloud(path)
        np.testing.assert_array_equal(back.classes, classes)
        assert back.crs == WKT and back.unit_factor == 1.0


def test_las_in_feet_restores_crs_units(tmp_path):
    feet = 'PROJCS["x",GEOGCS["g",DATUM["d",SPHEROID["s",6378137,298.257]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic_2SP"],UNIT["foot",0.3048]]'  # noqa: E501
    pts = np.array([[1000.0, 2000.0, 30.0], [1010.0, 2005.0, 31.0]])
    path = write_las(tmp_path / "f.las", pts, crs=feet, unit_factor=0.3048)
    las = laspy.read(str(path))
    np.testing.assert_allclose(las.x, pts[:, 0] / 0.3048, atol=1e-3)
    np.testing.assert_allclose(read_point_cloud(path).points, pts, atol=1e-3)


def test_mesh_from_voxels_cube_and_colours(tmp_path):
    coords = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    colors = np.tile([1.0, 0.0, 0.0], (len(coords), 1))
    mesh = mesh_from_voxels(coords, 0.5, origin=(10.0, 20.0, 0.0), colors=colors)
    # the 0.5 iso-surface lies half a voxel outside the outer voxel centres
    np.testing.assert_allclose(mesh.bounds, [[9.75, 19.75, -0.25], [11.25, 21.25, 1.25]], atol=1e-6)
    assert mesh.is_watertight and mesh.volume > 0
    assert (mesh.visual.vertex_colors[:, :3] == [255, 0, 0]).all()
    for suffix in (".glb", ".obj"):
        path = write_mesh(tmp_path / f"m{suffix}", mesh, crs=WKT)
        loaded = trimesh.load(str(path), force="mesh")
        assert len(loaded.faces) == len(mesh.faces)
        assert (np.asarray(loaded.visual.vertex_colors)[:, :3] == [255, 0, 0]).all()
        side = json.loads((tmp_path / f"m{suffix}.geo.json").read_text())
        assert side["crs"] == WKT
        np.testing.assert_allclose(np.asarray(loaded.vertices) + side["offset"], mesh.vertices, atol=1e-4)
    assert (tmp_path / "m.prj").read_text() == WKT


def test_mesh_from_points_fills_columns(cloud):
    points, colors, _, _ = cloud
    mesh = mesh_from_points(points, colors, voxel_size=2.0)
    assert mesh.is_watertight
    assert mesh.bounds[0][2] <= points[:, 2].min() + 1e-6 and mesh.bounds[1][2] >= points[:, 2].max() - 1e-6


def test_meshing_a_grid_too_large_for_memory_is_refused_with_its_estimate(cloud, monkeypatch):
    points, colors, _, _ = cloud
    monkeypatch.setattr(np, "unique", lambda *a, **k: pytest.fail("voxelized before the refusal"))
    with pytest.raises(ValueError, match=r"voxel grid at voxel_size 0.0001: estimated peak memory [0-9.e+]+ GB exceeds"):
        mesh_from_points(points, colors, voxel_size=1e-4)
    with pytest.raises(ValueError, match="exceeds max_memory_gb"):
        mesh_from_points(points, colors, voxel_size=2.0, max_memory_gb=1e-9)
    with pytest.raises(ValueError, match="max_memory_gb must be a finite number > 0"):
        mesh_from_points(points, colors, voxel_size=2.0, max_memory_gb=float("nan"))
    with pytest.raises(ValueError, match=r"meshing a 200003x3x103 voxel grid .* exceeds max_memory_gb \(0.5 GB\)"):
        mesh_from_voxels(np.array([[0, 0, 0], [200000, 0, 100]]), 1.0, max_memory_gb=0.5)


def test_video_gif_and_mp4(tmp_path):
    frames = [np.full((20, 30, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    gif = write_video(tmp_path / "a.gif", frames, fps=5)
    assert iio.imread(gif).shape[0] == 3
    pytest.importorskip("imageio_ffmpeg", reason="MP4 needs the optional imageio-ffmpeg package")
    mp4 = write_video(tmp_path / "a.mp4", [f.astype(np.float32) / 255 for f in frames], fps=5)
    assert iio.imread(mp4, plugin="FFMPEG").shape[:3] == (3, 20, 30)
    with pytest.raises(ValueError, match="differ in size"):
        write_video(tmp_path / "b.gif", [frames[0], frames[0][:10]])


def test_preview_png(tmp_path, cloud):
    points, colors, _, _ = cloud
    path = write_preview(tmp_path / "p.png", points, colors, view="top", width=64, height=48)
    assert iio.imread(path).shape[:2] == (48, 64)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"points": np.zeros((0, 3))}, "no points"),
        ({"points": np.array([[0.0, np.nan, 0.0]])}, "NaN"),
        ({"points": np.zeros((4, 2))}, r"\[N, 3\]"),
        ({"colors": np.full((3, 3), 2.0)}, "0..1"),
        ({"colors": np.zeros((2, 3))}, "shape"),
        ({"classes": np.array([0, 1, 99])}, "outside the class table"),
        ({"classes": np.array([0.0, 1.0, 2.0])}, "integers"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, kwargs, msg):
    args = {"points": np.zeros((3, 3)), "colors": None, "classes": None, **kwargs}
    for writer, name in ((write_point_ply, "a.ply"), (write_las, "a.laz")):
        with pytest.raises(ValueError, match=msg):
            writer(tmp_path / name, args["points"], args["colors"], classes=args["classes"])
    with pytest.raises(ValueError):
        write_gaussian_ply(
            tmp_path / "g.ply", args["points"], args["colors"] if args["colors"] is not None else np.full((3, 3), 2.0), 0.1
        )
    assert list(tmp_path.iterdir()) == []
