"""Readers of real geodata: the shipped real LiDAR sample (docs/data/autzen_trim.laz, from
laspy's source distribution), height maps (PNG 8/16-bit, GeoTIFF via rasterio), semantic maps,
ASPRS class mapping, and corrupt / truncated / missing inputs."""

from pathlib import Path

import laspy
import numpy as np
import pytest
from PIL import Image

from diffusers_city.data import FACADE, GROUND, ROAD, ROOF, VEGETATION, WATER, CityScene
from diffusers_city.data.readers import (
    UNKNOWN,
    asprs_to_city,
    read_aerial_image,
    read_height_input,
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


# ---------------------------------------------------------------------------- hardening (#25)


def _small_las(path: Path, n: int = 60) -> Path:
    """A LAS 1.2 / point format 3 file (or LAZ, by suffix) of ``n`` points in a projected CRS."""
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = [0.01] * 3, [350000.0, 5600000.0, 0.0]
    las = laspy.LasData(header)
    rng = np.random.default_rng(0)
    las.x, las.y, las.z = 350000 + rng.random(n) * 40, 5600000 + rng.random(n) * 40, rng.random(n) * 10
    las.classification = np.full(n, 2, np.uint8)
    las.write(str(path))
    return path


def _patch(path: Path, offset: int, fmt: str, *values) -> Path:
    import struct

    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_header_claiming_more_points_than_the_file_holds_is_refused_before_decoding(tmp_path, suffix):
    """laspy allocates point count x record length up front (170 M points claimed by a 507 KB
    file took 6.6 GB); lazrs aborts the process on a failed allocation."""
    path = _small_las(tmp_path / f"p{suffix}")
    assert len(read_point_cloud(path)) == 60
    _patch(path, 107, "<I", 170_000_000)  # legacy point count
    with pytest.raises(ValueError, match=rf"p\{suffix}.*(170000000 points|chunk table holds)"):
        read_point_cloud(path)


def test_las_header_offsets_outside_the_file_are_refused(tmp_path):
    path = _small_las(tmp_path / "p.las")
    size = path.stat().st_size
    _patch(path, 96, "<I", size + 10)  # offset to point data
    with pytest.raises(ValueError, match="point data offset .* outside"):
        read_point_cloud(path)
    _patch(_small_las(path), 100, "<I", 1000)  # number of VLRs
    with pytest.raises(ValueError, match="1000 VLRs"):
        read_point_cloud(path)


@pytest.mark.parametrize("scale", [float("nan"), 0.0, float("inf")])
def test_las_with_a_nan_or_zero_scale_is_refused(tmp_path, scale):
    path = _patch(_small_las(tmp_path / "p.las"), 131 + 8, "<d", scale)  # y scale factor
    with pytest.raises(ValueError, match=r"p\.las: corrupt header: coordinate scales"):
        read_point_cloud(path)
    path = _patch(_small_las(tmp_path / "q.laz"), 155, "<d", float("nan"))  # x offset
    with pytest.raises(ValueError, match=r"q\.laz: corrupt header"):
        read_point_cloud(path)


@pytest.mark.filterwarnings("error")  # refused, not converted with a ComplexWarning
def test_complex_and_bool_height_rasters_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((4, 4), np.complex64))
    np.save(tmp_path / "b.npy", np.eye(4, dtype=bool))
    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "bits.png")  # mode '1'
    for name in ("c.npy", "b.npy", "bits.png"):
        with pytest.raises(ValueError, match=rf"{name}: height values must be real numbers"):
            read_height_map(tmp_path / name, meters_per_pixel=1)


def test_complex_geotiff_is_refused(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="complex64") as dst:
        dst.write(np.ones((4, 4), np.complex64), 1)
    with pytest.raises(ValueError, match=r"c\.tif: height values must be real numbers, got complex64"):
        read_height_map(tmp_path / "c.tif", meters_per_pixel=1)


def test_geotiff_in_degrees_is_refused_not_read_as_metres(tmp_path):
    """EPSG:4326 pixels are degrees: read as metres, a 30 m DSM became a city millimetres wide."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="float32", crs="EPSG:4326")
    with rasterio.open(tmp_path / "deg.tif", "w", transform=from_origin(13.4, 52.5, 0.0003, 0.0003), **profile) as dst:
        dst.write(np.arange(16, dtype=np.float32).reshape(4, 4), 1)
    with pytest.raises(ValueError, match=r"deg\.tif is in a geographic CRS .*degrees.*gdalwarp -t_srs EPSG:32633"):
        read_height_map(tmp_path / "deg.tif")
    with pytest.raises(ValueError, match="geographic CRS"):
        scene_from_file(tmp_path / "deg.tif")


def test_a_metric_raster_is_never_read_as_gray(tmp_path):
    """`read_height_input` decides metric vs Sat2City gray by the file's type, never by its
    values: a float GeoTIFF DSM whose heights lie in 0..255 stays metric and georeferenced."""
    data = np.arange(20, dtype=np.float32).reshape(4, 5) * 10  # 0..190 m
    _geotiff(tmp_path / "dsm.tif", data)
    scene = read_height_input(tmp_path / "dsm.tif")
    assert isinstance(scene, CityScene) and scene.crs == "EPSG:32633" and scene.meters_per_pixel == 2.0
    np.testing.assert_allclose(scene.world_height(), data[::-1])
    Image.fromarray(data.astype(np.uint16)).save(tmp_path / "dsm16.png")
    assert isinstance(read_height_input(tmp_path / "dsm16.png", 1.0), CityScene)
    with pytest.raises(ValueError, match="pass meters_per_pixel"):
        read_height_input(tmp_path / "dsm16.png")
    Image.fromarray(data.astype(np.uint8)).save(tmp_path / "gray.png")
    gray = read_height_input(tmp_path / "gray.png")
    assert gray.dtype == np.uint8 and (gray == data).all()


def test_implausible_heights_are_refused(tmp_path):
    """Heights of 1e7 m (millimetres read as metres, a corrupt file) are no surface on Earth."""
    Image.fromarray(np.array([[0.0, 1.0], [2.0, 3e7]], np.float32)).save(tmp_path / "far.tif")
    with pytest.raises(ValueError, match=r"far\.tif: heights reach 3e\+07 m, beyond"):
        read_height_map(tmp_path / "far.tif", meters_per_pixel=1)
    Image.fromarray(np.array([[0, 250]], np.uint8)).save(tmp_path / "mm.png")
    with pytest.raises(ValueError, match="check vertical_scale"):
        read_height_map(tmp_path / "mm.png", meters_per_pixel=1, vertical_scale=1000.0)
    assert read_height_map(tmp_path / "mm.png", meters_per_pixel=1, vertical_scale=100.0).height.max() == 25000


def _georeferenced(path: Path, transform, crs="EPSG:32633") -> Path:
    rasterio = pytest.importorskip("rasterio")
    profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="float32", crs=crs)
    with rasterio.open(path, "w", transform=transform, **profile) as dst:
        dst.write(np.random.default_rng(0).random((8, 8)).astype(np.float32) * 20, 1)
    return path


def test_corrupt_or_non_projected_georeferences_are_refused(tmp_path):
    """Found by the fuzzer: an infinite pixel size overflowed the ground filter's window
    (OverflowError) or made it as wide as memory; a geocentric CRS was read as metres."""
    import struct

    from affine import Affine

    for name, scale in (("inf.tif", float("inf")), ("nan.tif", float("nan"))):
        path = _georeferenced(tmp_path / name, Affine(2.0, 0, 350000.0, 0, -2.0, 5600000.0))
        raw = path.read_bytes()  # the GeoTIFF's ModelPixelScale tag holds (2, 2, 0)
        path.write_bytes(raw.replace(struct.pack("<3d", 2, 2, 0), struct.pack("<3d", scale, 2, 0)))
        with pytest.raises(ValueError, match=rf"{name} has a corrupt georeference"):
            read_height_input(path)
    tiny = _georeferenced(tmp_path / "tiny.tif", Affine(1e-300, 0, 350000.0, 0, -1e-300, 5600000.0))
    assert read_height_input(tiny).meters_per_pixel == 1e-300  # the terrain window stops at the raster
    geocentric = _georeferenced(tmp_path / "ecef.tif", Affine(2.0, 0, 4e6, 0, -2.0, 1e6), crs="EPSG:4978")
    with pytest.raises(ValueError, match=r"ecef\.tif: its CRS .* is not a projected CRS"):
        read_height_map(geocentric)


def test_scenes_too_large_for_memory_are_refused_before_their_rasters(tmp_path):
    from diffusers_city.utils import MemoryLimitError

    far = np.array([[0.0, 0.0, 0.0], [3.0e5, 2.0e5, 10.0], [10.0, 20.0, 5.0]])  # two points 300 km apart
    ply = write_point_ply(tmp_path / "far.ply", far)
    with pytest.raises(MemoryLimitError, match=r"far\.ply.*200001x300001 px at 1 m/px.*meters_per_pixel"):
        scene_from_file(ply, max_memory_gb=8)
    assert scene_from_file(ply, meters_per_pixel=2000.0, max_memory_gb=8).shape == (101, 151)
    dsm = tmp_path / "dsm.npy"
    np.save(dsm, np.random.default_rng(0).uniform(0, 20, (600, 500)).astype(np.float32))
    with pytest.raises(MemoryLimitError, match=r"dsm\.npy.*600x500 px"):
        scene_from_file(dsm, meters_per_pixel=1.0, max_memory_gb=0.01)
    assert scene_from_file(dsm, meters_per_pixel=1.0, max_memory_gb=1).shape == (600, 500)
