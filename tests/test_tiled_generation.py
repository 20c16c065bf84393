"""Tiled generation of areas larger than one tile (issue #22): the plan, RePaint conditioning of
every stage on finished neighbours, the resumable folder, refusals before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_earthcrafter_pipeline import make_tiny as make_tiny_earthcrafter
from test_sat2city_pipeline import keep_everything
from training_helpers import launch_two_processes

from diffusers_city import Sat2CityPipeline
from diffusers_city.data import FACADE, GROUND, ROOF, procedural_city
from diffusers_city.data.labels import classes_from_terrain, terrain_estimate
from diffusers_city.data.readers import city_to_asprs, read_ply
from diffusers_city.pipelines.tiled_area import merge_area
from diffusers_city.pipelines.tiling import plan_tiles, tile_pixels
from diffusers_city.utils.memory import MemoryLimitError

STEPS = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: small sparse ops run faster so on a loaded 2-core CPU, same results."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sat2city():
    return keep_everything(Sat2CityPipeline.from_preset("tiny"))


@pytest.fixture(scope="module")
def area():
    """80 x 80 px at 2 m: 2 x 2 tiles of the tiny preset's 64 px (128 m) crop, 16 px overlap."""
    return procedural_city(0, size_m=160, meters_per_pixel=2.0, max_building_height_m=24.0)


@pytest.fixture(scope="module")
def full_run(sat2city, area, tmp_path_factory):
    folder = tmp_path_factory.mktemp("area") / "city"
    return sat2city.generate_area(area, folder, num_inference_steps=STEPS, seed=3)


def shared_cells(folder, a: str, b: str, stage: str):
    """The latents tiles ``a`` and ``b`` ended with at the area cells both have (a's, b's)."""
    la, lb = (load_file(folder / "tiles" / f"{name}.latents.safetensors") for name in (a, b))
    index = {tuple(c): i for i, c in enumerate(la[f"{stage}.cells"].tolist())}
    pairs = [(index[tuple(c)], j) for j, c in enumerate(lb[f"{stage}.cells"].tolist()) if tuple(c) in index]
    ia, ib = map(list, zip(*pairs))
    return la[f"{stage}.latents"][ia], lb[f"{stage}.latents"][ib]


def tile_points(folder) -> dict[str, np.ndarray]:
    index = json.loads((folder / "index.json").read_text())
    return {t["name"]: read_ply(folder / "tiles" / t["files"]["ply"]).points for t in index["tiles"] if "ply" in t["files"]}


def test_plan_waves_are_independent_and_tiles_partition_the_area():
    plan = plan_tiles((100, 70), tile=32, overlap=8, align=8)
    tiles = plan.tiles()
    assert plan.grid == (4, 3) and len(tiles) == 12 and plan.padded_shape == (104, 80)
    owned = np.zeros((100, 70), int)
    for t in tiles:
        assert t.r0 % 8 == 0 and t.c0 % 8 == 0
        r_lo, r_hi, c_lo, c_hi = t.own
        assert t.r0 <= r_lo and r_hi <= t.r0 + t.size and t.c0 <= c_lo and c_hi <= t.c0 + t.size
        owned[r_lo:r_hi, c_lo:c_hi] += 1
    assert (owned == 1).all()
    for wave in plan.waves():  # no two tiles of one wave overlap
        for a in wave:
            for b in wave:
                assert a == b or abs(a.r0 - b.r0) >= a.size or abs(a.c0 - b.c0) >= a.size
    assert len(plan.neighbours(tiles[4])) == 8 and tiles[4].wave == 3  # tile (1, 1) runs after all its neighbours
    assert plan.neighbours(tiles[0]) == []
    assert tiles[0].seed(0) != tiles[1].seed(0) and tiles[0].seed(0) == plan.tiles()[0].seed(0)
    with pytest.raises(ValueError, match="half a tile"):
        plan_tiles((100, 70), tile=32, overlap=24, align=8)
    with pytest.raises(ValueError, match="multiples of 8 px"):
        plan_tiles((100, 70), tile=32, overlap=4, align=8)
    assert tile_pixels(300, 18.75, 1.0) == (300, 75, 75)  # a 1 m DSM on the small preset: 4 latent cells per align
    with pytest.raises(ValueError, match="resample"):
        tile_pixels(128, 16, 7.0)


def test_sat2city_area_tiles_agree_with_finished_neighbours(full_run, sat2city, area, tmp_path):
    folder = full_run.folder
    index = json.loads((folder / "index.json").read_text())
    assert index["grid"] == [2, 2] and len(index["tiles"]) == 4 and index["crs"] is None
    assert "local" in index["frame"]
    points = tile_points(folder)
    assert len(points) == 4 and sum(len(p) for p in points.values()) == sum(t["points"] for t in index["tiles"])
    for record in index["tiles"]:
        xmin, ymin, xmax, ymax = record["bounds"]
        p = points[record["name"]]
        assert (p[:, 0] >= xmin).all() and (p[:, 0] < xmax).all() and (p[:, 1] >= ymin).all() and (p[:, 1] < ymax).all()
    # every stage of a later tile ends with its finished neighbour's latents where they overlap
    for stage in ("dense", "sparse", "appearance"):
        a, b = shared_cells(folder, "tile_0000_0000", "tile_0001_0001", stage)
        assert len(a) > 0 and torch.allclose(a, b, atol=1e-6), stage
    # ... which independent tiles (no conditioning) do not
    alone = sat2city.generate_area(area, tmp_path / "alone", num_inference_steps=STEPS, seed=3, inpaint=False)
    a, b = shared_cells(alone.folder, "tile_0000_0000", "tile_0001_0001", "dense")
    assert (a - b).abs().max() > 0.1


def test_sat2city_area_resumes_after_a_failed_tile(full_run, sat2city, area, tmp_path):
    def fail_after_two(tile, record):
        if tile.wave == 1:
            raise RuntimeError("injected failure")

    folder = tmp_path / "city"
    with pytest.raises(RuntimeError, match="injected") as failed:
        sat2city.generate_area(area, folder, num_inference_steps=STEPS, seed=3, callback_on_tile_end=fail_after_two)
    assert len(list((folder / "tiles").glob("*.json"))) == 2 and not (folder / "index.json").exists()
    note = " ".join(failed.value.__notes__)  # the run says which tile failed and what is kept
    assert "tile tile_0000_0001, row 0 column 1, failed; 2 of 4 tiles are finished" in note and "resumes" in note
    ran = []
    sat2city.generate_area(area, folder, num_inference_steps=STEPS, seed=3, callback_on_tile_end=lambda t, r: ran.append(t.name))
    assert ran == ["tile_0001_0000", "tile_0001_0001"]  # the two finished tiles were not made again
    resumed, fresh = tile_points(folder), tile_points(full_run.folder)
    assert resumed.keys() == fresh.keys()
    for name, points in fresh.items():
        np.testing.assert_allclose(resumed[name], points, atol=1e-4)


def glb_vertices(folder, record, origin) -> np.ndarray:
    """World vertices of a tile's GLB: stored relative to the area origin (its ``.geo.json``
    records that offset, written when the offset or the CRS is not empty)."""
    import trimesh

    path = folder / "tiles" / record["files"]["glb"]
    side = path.with_name(path.name + ".geo.json")
    offset = json.loads(side.read_text())["offset"] if side.is_file() else [0.0, 0.0, 0.0]
    assert offset == origin
    return trimesh.load(path, force="mesh").vertices + np.asarray(offset)


def test_area_tiles_have_glb_meshes_and_classes_that_reach_the_merged_las(full_run, sat2city, area, tmp_path):
    import laspy

    folder = shutil.copytree(full_run.folder, tmp_path / "city")
    index = json.loads((folder / "index.json").read_text())
    assert "height above" in index["classes_from"]
    v = sat2city.dense_vae.config.voxel_size
    terrain = terrain_estimate(area.height, area.meters_per_pixel)
    tiles = [t for t in index["tiles"] if "ply" in t["files"]]
    assert len(tiles) == 4 and all(t["files"]["glb"] == f"{t['name']}.glb" for t in tiles)
    labelled = []
    for record in tiles:
        cloud = read_ply(folder / "tiles" / record["files"]["ply"])
        verts = glb_vertices(folder, record, index["origin"])
        xmin, ymin, xmax, ymax = record["bounds"]  # the mesh closes half a voxel beyond the points' centres
        assert verts[:, 0].min() >= xmin - v and verts[:, 0].max() <= xmax + v
        assert verts[:, 1].min() >= ymin - v and verts[:, 1].max() <= ymax + v
        assert abs(verts[:, 2].max() - cloud.points[:, 2].max()) <= v
        expected = classes_from_terrain(cloud.points, terrain, area.meters_per_pixel, area.origin, cloud.normals)
        np.testing.assert_array_equal(cloud.classes, expected)
        labelled.append(cloud.classes)
    labelled = np.concatenate(labelled)
    assert set(np.unique(labelled)) <= {GROUND, ROOF, FACADE} and (labelled == GROUND).any() and (labelled != GROUND).any()
    merge_area(folder, ["las", "ply"])
    las = laspy.read(folder / "area.las")
    np.testing.assert_array_equal(np.asarray(las.city_class), labelled)  # tiles in index order
    np.testing.assert_array_equal(np.asarray(las.classification), city_to_asprs(labelled))
    assert set(np.unique(las.classification)) <= {2, 6}  # ASPRS ground, building
    np.testing.assert_array_equal(read_ply(folder / "area.ply").classes, labelled)


def test_point_classes_from_terrain_and_semantic_map():
    from diffusers_city.data import VEGETATION
    from diffusers_city.data.labels import classes_from_semantic

    origin = (10.0, 20.0, 100.0)
    terrain = np.zeros((2, 3), np.float32)
    terrain[:, 2] = 5.0  # a slope: 5 m up in the last column
    points = np.array([[10.5, 20.5, 101.0], [11.5, 20.5, 110.0], [11.5, 21.5, 106.0], [12.5, 20.5, 106.0], [30.0, 20.5, 109.0]])
    normals = np.array([[0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1], [0.6, 0, 0.8]])
    classes = classes_from_terrain(points, terrain, 1.0, origin, normals)
    # on the ground; a roof; a wall; 1 m above the raised terrain is ground; beyond the map: its edge column
    np.testing.assert_array_equal(classes, [GROUND, ROOF, FACADE, GROUND, ROOF])
    semantic = np.array([[VEGETATION, ROOF, GROUND], [VEGETATION, ROOF, GROUND]], np.uint8)
    column = np.array([[11.5, 20.5, 112.0], [11.4, 20.6, 111.6], [11.5, 20.4, 108.0], [10.2, 21.9, 115.0], [12.9, 21.0, 100.0]])
    np.testing.assert_array_equal(classes_from_semantic(column, semantic, 1.0, origin), [ROOF, ROOF, FACADE, VEGETATION, GROUND])
    with pytest.raises(ValueError, match="outside the class table"):
        classes_from_semantic(column, semantic + 40, 1.0, origin)


def test_merged_las_chunks_without_classes_are_refused(tmp_path):
    from diffusers_city.export.las import write_las_chunks

    chunks = [(np.zeros((2, 3)), None, np.array([GROUND, ROOF])), (np.ones((1, 3)), None, None)]
    with pytest.raises(ValueError, match="a chunk has no class ids"):
        write_las_chunks(tmp_path / "a.las", iter(chunks), (0.0, 0.0, 0.0), classes=True)
    assert not (tmp_path / "a.las").exists()


def test_area_folder_of_another_run_is_refused(full_run, sat2city, area, tmp_path):
    with pytest.raises(ValueError, match="holds another run .*seed"):
        sat2city.generate_area(area, full_run.folder, num_inference_steps=STEPS, seed=4)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files .*notes.txt"):
        sat2city.generate_area(area, tmp_path, num_inference_steps=STEPS)


def test_area_beyond_the_memory_limit_is_refused_before_any_work(sat2city, area, tmp_path):
    with pytest.raises(MemoryLimitError, match=r"4 tiles of 64 px \(one tile\): estimated peak memory"):
        sat2city.generate_area(area, tmp_path / "city", num_inference_steps=STEPS, max_memory_gb=1e-4)
    assert not (tmp_path / "city").exists()


def test_area_holes_are_refused_with_their_share_or_filled(sat2city, area, tmp_path, caplog):
    height = area.height.copy()
    height[:8, :10] = np.nan  # 80 of 6400 pixels
    np.save(tmp_path / "dsm.npy", height)  # a float raster: metric, its resolution given
    with pytest.raises(ValueError, match=r"80 no-data / NaN / inf pixels \(1.2% of the map\); pass fill_nodata=True"):
        sat2city.generate_area(tmp_path / "dsm.npy", tmp_path / "a", meters_per_pixel=2.0)
    with pytest.raises(ValueError, match="needs meters_per_pixel"):
        sat2city.generate_area(np.zeros((80, 80), np.uint8), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    out = sat2city.generate_area(tmp_path / "dsm.npy", tmp_path / "a", 1, meters_per_pixel=2.0, fill_nodata=True)
    assert "filled 80 no-data / NaN / inf pixels (1.2% of the map)" in caplog.text and len(out.tiles) == 4


def test_earthcrafter_area_tiles_agree_with_finished_neighbours(tmp_path):
    pipe = make_tiny_earthcrafter()
    semantic = np.random.default_rng(0).integers(0, 8, (24, 24))  # 2 x 2 tiles of 16 px, 8 px overlap
    out = pipe.generate_area(semantic, tmp_path / "area", num_inference_steps=STEPS, seed=1, origin=(1000.0, 2000.0, 50.0))
    index = json.loads(out.index.read_text())
    assert index["grid"] == [2, 2] and index["bounds"] == [1000.0, 2000.0, 1096.0, 2096.0]
    assert all({"ply", "glb", "splat"} <= t["files"].keys() for t in index["tiles"])
    for stage in ("occupancy", "structure", "texture"):
        a, b = shared_cells(out.folder, "tile_0000_0000", "tile_0000_0001", stage)
        assert len(a) > 0 and torch.allclose(a, b, atol=1e-6), stage
    # every point of the merged LAS has the class of the semantic map under it (roof pixels: roof / facade)
    import laspy

    assert "semantic map" in index["classes_from"]
    merge_area(out.folder, ["laz"])
    las = laspy.read(out.folder / "area.laz")
    xy = (np.stack([las.x, las.y], 1) - [1000.0, 2000.0]) / pipe.voxel_size
    clear = (np.abs(xy - np.round(xy)) > 1e-2).all(1)  # not on a pixel border (millimetre coordinates)
    under = semantic[np.floor(xy[clear, 1]).astype(int), np.floor(xy[clear, 0]).astype(int)]
    got = np.asarray(las.city_class)[clear].astype(int)
    assert clear.mean() > 0.9 and len(np.unique(under)) > 4
    np.testing.assert_array_equal(np.where(under == ROOF, -1, got), np.where(under == ROOF, -1, under))
    assert set(np.unique(got[under == ROOF])) <= {ROOF, FACADE}
    np.testing.assert_array_equal(np.asarray(las.classification), city_to_asprs(np.asarray(las.city_class)))


def write_geotiff(path, height: np.ndarray, mpp: float, west: float, north: float, crs: str = "EPSG:32633"):
    """A north-up float32 GeoTIFF DSM (metres) whose first row is the north edge."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height.shape[0],
        width=height.shape[1],
        count=1,
        dtype="float32",
        crs=crs,
        transform=from_origin(west, north, mpp, mpp),
    ) as dst:
        dst.write(height[::-1].astype(np.float32), 1)  # rows grow northwards in a CityScene, southwards in the file


@pytest.mark.xdist_group("ddp")
def test_cli_area_of_a_geotiff_on_two_processes_equals_one(sat2city, area, tmp_path):
    from diffusers_city.cli import main
    from diffusers_city.data.readers import read_las

    write_geotiff(tmp_path / "dsm.tif", area.height + 120.0, 2.0, 500_000.0, 5_000_160.0)
    sat2city.save_pretrained(tmp_path / "model")
    argv = ["generate", "sat2city", "--height-map", str(tmp_path / "dsm.tif"), "--model", str(tmp_path / "model")]
    argv += ["--steps", str(STEPS), "--seed", "5"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    launch_two_processes("diffusers_city.cli", [*argv, "--out", str(tmp_path / "two"), "--merge", "las", "3dtiles"], module=True)
    one, two = tile_points(tmp_path / "one"), tile_points(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 4
    for name, points in one.items():  # per-tile seeds and neighbours on disk: the process count changes nothing
        np.testing.assert_allclose(two[name], points, atol=1e-4)
    index = json.loads((tmp_path / "two" / "index.json").read_text())
    assert index["crs"] == "EPSG:32633" and index["bounds"] == [500_000.0, 5_000_000.0, 500_160.0, 5_000_160.0]
    for record in index["tiles"]:  # GLB tiles: vertices relative to the origin, the CRS beside them
        verts = glb_vertices(tmp_path / "two", record, index["origin"])
        side = json.loads((tmp_path / "two" / "tiles" / f"{record['name']}.glb.geo.json").read_text())
        assert side["crs"] == "EPSG:32633" and verts[:, 0].min() > record["bounds"][0] - 3
    everything = np.concatenate(list(two.values()))
    assert everything[:, 0].min() >= 500_000 and everything[:, 1].max() < 5_000_160 and everything[:, 2].min() > 100
    las = read_las(tmp_path / "two" / "area.las")
    assert len(las.points) == len(everything) and las.crs is not None and "32633" in las.crs
    tileset = json.loads((tmp_path / "two" / "tileset.json").read_text())
    assert len(tileset["root"]["children"]) == 4 and len(tileset["root"]["transform"]) == 16
    lon, lat = tileset["asset"]["extras"]["centre_lon_lat"]
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2  # UTM 33N, 500 km east, 5000 km north


def test_cli_earthcrafter_area_from_a_semantic_map(tmp_path, capsys):
    from diffusers_city.cli import main

    make_tiny_earthcrafter().save_pretrained(tmp_path / "model")
    np.save(tmp_path / "semantic.npy", np.random.default_rng(2).integers(0, 8, (24, 24)).astype(np.uint8))
    argv = ["generate", "earthcrafter", "--semantic-map", str(tmp_path / "semantic.npy"), "--pretrained", str(tmp_path / "model")]
    assert main([*argv, "--steps", "1", "--out", str(tmp_path / "area"), "--merge", "ply"]) == 0
    assert "frame: local metres (the input had no georeference)" in capsys.readouterr().out
    index = json.loads((tmp_path / "area" / "index.json").read_text())
    assert index["grid"] == [2, 2] and index["merged"] == {"ply": "area.ply"}
    assert len(read_ply(tmp_path / "area" / "area.ply").points) == sum(t["points"] for t in index["tiles"])
    assert main([*argv, "--steps", "2", "--out", str(tmp_path / "area")]) == 2  # another run's folder
    assert "holds another run (different num_inference_steps)" in capsys.readouterr().err
