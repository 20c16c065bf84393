"""Readers of real geodata: the shipped real LiDAR sample (docs/data/autzen_trim.laz, from
laspy's source distribution), height maps (PNG 8/16-bit, GeoTIFF via rasterio), semantic maps,
ASPRS class mapping, and corrupt / truncated / missing inputs."""

from pathlib import Path

import laspy
import numpy as np
import pytest
from PIL import Image

from diffusers_city.data import FACADE, GROUND, ROAD, ROOF, VEGETATION, WATER
from diffusers_city.data.readers import (
    UNKNOWN,
    asprs_to_city,
    read_aerial_image,
    read_height_map,
    read_point_cloud,
    read_semantic_map,
    scene_from_file,
)
from diffusers_city.export import write_point_ply

REAL_LAZ = Path(__file__).resolve().parents[1] / "docs" / "data" / "autzen_trim.laz"


def test_real_lidar_sample_reads_in_metres():
    cloud = read_point_cloud(REAL_LAZ)
    raw = laspy.read(str(REAL_LAZ))
    assert len(cloud) == len(raw.points) == 110_000
    assert "foot" in cloud.crs and cloud.unit_factor == pytest.approx(0.3048)
    np.testing.assert_allclose(cloud.points[:, 0], np.asarray(raw.x) * 0.3048)
    assert cloud.colors.shape == (110_000, 3) and 0 <= cloud.colors.min() and cloud.colors.max() <= 1
    # ASPRS 2 (ground) -> ground, 1 (unclassified) -> unknown, resolved later by scene_from_file
    np.testing.assert_array_equal(cloud.classes == GROUND, np.asarray(raw.classification) == 2)
    assert (cloud.classes[np.asarray(raw.classification) == 1] == UNKNOWN).all()


def test_scene_from_real_lidar():
    scene = scene_from_file(REAL_LAZ, meters_per_pixel=2.0)
    assert scene.crs.startswith("PROJCS") and scene.metadata["crs_unit_factor"] == pytest.approx(0.3048)
    w, h = scene.size_m
    assert 100 < w < 400 and 40 < h < 200  # the trimmed Autzen tile is ~359 m x 171 m
    assert scene.num_points == 110_000 and scene.point_classes.max() < UNKNOWN
    assert (scene.ground <= scene.height + 1e-3).all()
    # trees and the footbridge stand above the terrain
    assert {GROUND, VEGETATION} <= set(np.unique(scene.semantic).tolist())


def test_asprs_mapping_roof_facade():
    # a 2 m x 2 m building: top points -> roof, wall points below -> facade
    pts = np.array([[0.2, 0.2, 10.0], [0.8, 0.7, 10.1], [0.2, 0.2, 4.0], [0.5, 0.5, 0.0], [3, 3, 1], [4, 4, 0]])
    asprs = np.array([6, 6, 6, 2, 5, 9])
    np.testing.assert_array_equal(asprs_to_city(asprs, pts), [ROOF, ROOF, FACADE, GROUND, VEGETATION, WATER])
    normals = np.tile([0.0, 0.0, 1.0], (6, 1))
    normals[0] = [1.0, 0.0, 0.0]
    assert asprs_to_city(asprs, pts, normals)[0] == FACADE
    assert asprs_to_city(np.array([11, 17, 1, 0]), pts[:4]).tolist() == [ROAD, ROAD, UNKNOWN, UNKNOWN]


@pytest.mark.parametrize("bits", [8, 16])
def test_height_map_png_scale_offset(tmp_path, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    values = (np.arange(12).reshape(3, 4) * (20 if bits == 8 else 5000)).astype(dtype)
    path = tmp_path / "h.png"
    Image.fromarray(values).save(path)
    hm = read_height_map(path, meters_per_pixel=0.5, vertical_scale=0.1, vertical_offset=-2.0)
    np.testing.assert_allclose(hm.height, values * 0.1 - 2.0, rtol=1e-6)
    assert hm.meters_per_pixel == 0.5 and hm.origin == (0.0, 0.0)
    with pytest.raises(ValueError, match="meters_per_pixel"):
        read_height_map(path)


def _geotiff(path, data, x0=350000.0, ytop=5600000.0, mpp=2.0, nodata=None):
    rasterio = pytest.importorskip("rasterio", reason="GeoTIFF reading uses the optional 'geo' extra")
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(x0, ytop, mpp, mpp),
        nodata=nodata,
    ) as dst:
        dst.write(data.astype(np.float32), 1)


def test_geotiff_north_up_is_flipped_to_rows_growing_north(tmp_path):
    data = np.arange(20, dtype=np.float32).reshape(4, 5) + 100  # row 0 = northernmost
    _geotiff(tmp_path / "dsm.tif", data)
    hm = read_height_map(tmp_path / "dsm.tif")
    assert hm.crs == "EPSG:32633" and hm.meters_per_pixel == 2.0
    assert hm.origin == (350000.0, 5600000.0 - 4 * 2.0)  # south-west corner
    np.testing.assert_array_equal(hm.height, data[::-1])  # row 0 is now the southern row
    scene = scene_from_file(tmp_path / "dsm.tif")
    assert scene.origin[:2] == hm.origin and scene.crs == "EPSG:32633"
    np.testing.assert_allclose(scene.world_height(), data[::-1])
    with pytest.raises(ValueError, match="m/px in its georeference"):
        read_height_map(tmp_path / "dsm.tif", meters_per_pixel=1.0)


def test_geotiff_nodata(tmp_path):
    data = np.arange(16, dtype=np.float32).reshape(4, 4)
    data[1, 2] = -9999
    _geotiff(tmp_path / "hole.tif", data, nodata=-9999)
    with pytest.raises(ValueError, match="1 no-data"):
        read_height_map(tmp_path / "hole.tif")
    filled = read_height_map(tmp_path / "hole.tif", fill_nodata=True).height
    assert np.isfinite(filled).all() and filled.min() >= 0


def test_bad_height_maps(tmp_path):
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(ValueError, match="constant"):
        read_height_map(tmp_path / "flat.png", meters_per_pixel=1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_height_map(tmp_path / "rgb.png", meters_per_pixel=1)
    Image.fromarray(np.arange(16, dtype=np.float32).reshape(4, 4)).save(tmp_path / "ok.tiff")
    with pytest.raises(ValueError, match="vertical_scale"):
        read_height_map(tmp_path / "ok.tiff", meters_per_pixel=1, vertical_scale=float("nan"))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_height_map(tmp_path / "empty.png", meters_per_pixel=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_height_map(tmp_path / "nope.png", meters_per_pixel=1)
    with pytest.raises(ValueError, match="unsupported"):
        read_height_map(REAL_LAZ, meters_per_pixel=1)


def _truncate(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_truncated_files_raise_naming_the_file(tmp_path):
    _truncate(REAL_LAZ, tmp_path / "cut.laz", 0.5)
    las_src = tmp_path / "full.las"
    laspy.read(str(REAL_LAZ)).write(str(las_src))
    _truncate(las_src, tmp_path / "cut.las", 0.5)
    _truncate(las_src, tmp_path / "header.las", 0.001)
    rng = np.random.default_rng(0)
    write_point_ply(tmp_path / "full.ply", rng.random((200, 3)), rng.random((200, 3)))
    _truncate(tmp_path / "full.ply", tmp_path / "cut.ply", 0.5)
    for name in ("cut.laz", "cut.las", "header.las", "cut.ply"):
        with pytest.raises(ValueError, match=f"{name}.*(corrupt|truncated)"):
            read_point_cloud(tmp_path / name)
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(tmp_path / "full.png")
    _truncate(tmp_path / "full.png", tmp_path / "cut.png", 0.5)
    with pytest.raises(ValueError, match="cut.png.*(corrupt|truncated)"):
        read_height_map(tmp_path / "cut.png", meters_per_pixel=1)
    _geotiff(tmp_path / "full.tif", rng.random((64, 64)) * 50)
    _truncate(tmp_path / "full.tif", tmp_path / "cut.tif", 0.3)
    with pytest.raises(ValueError, match="cut.tif.*(corrupt|truncated)"):
        read_height_map(tmp_path / "cut.tif")


def test_empty_point_cloud(tmp_path):
    from plyfile import PlyData, PlyElement

    empty = np.zeros(0, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(empty, "vertex")]).write(str(tmp_path / "e.ply"))
    with pytest.raises(ValueError, match="no points"):
        read_point_cloud(tmp_path / "e.ply")
    (tmp_path / "e.xyz").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported"):
        read_point_cloud(tmp_path / "e.xyz")


def test_semantic_map_and_aerial_image(tmp_path):
    labels = np.array([[0, 10], [20, 10]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "sem.png")
    sem = read_semantic_map(tmp_path / "sem.png", {0: "ground", 10: "road", 20: ROOF})
    np.testing.assert_array_equal(sem, [[GROUND, ROAD], [ROOF, ROAD]])
    with pytest.raises(ValueError, match=r"pixel values \[20\]"):
        read_semantic_map(tmp_path / "sem.png", {0: "ground", 10: "road"})
    with pytest.raises(ValueError, match="not a class"):
        read_semantic_map(tmp_path / "sem.png", {0: "lava"})
    rgb = np.array([[[255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "sem_rgb.png")
    sem = read_semantic_map(tmp_path / "sem_rgb.png", {(255, 0, 0): "roof", (0, 255, 0): "vegetation"})
    np.testing.assert_array_equal(sem, [[ROOF, VEGETATION]])
    img = read_aerial_image(tmp_path / "sem_rgb.png")
    assert img.dtype == np.float32 and img[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_scene_from_png_dsm(tmp_path):
    dsm = np.zeros((60, 60), dtype=np.uint8)
    dsm[20:30, 20:35] = 120  # a 12 m building at 0.1 m per level
    Image.fromarray(dsm).save(tmp_path / "dsm.png")
    scene = scene_from_file(tmp_path / "dsm.png", meters_per_pixel=1.0, vertical_scale=0.1)
    assert scene.height.max() == pytest.approx(12.0)
    assert (scene.semantic[20:30, 20:35] == ROOF).all() and (scene.semantic[:10] == GROUND).all()
    with pytest.raises(FileNotFoundError):
        scene_from_file(tmp_path / "missing.laz")
