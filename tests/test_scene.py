"""CityScene: validation, save/load, crops and tiles."""

import json

import numpy as np
import pytest

from diffusers_city.data import CLASSES, CityScene, label_instances, procedural_city


@pytest.fixture(scope="module")
def scene():
    return procedural_city(3, 48, points_per_m2=2)


def _simple(**kw):
    h = np.zeros((4, 5), np.float32)
    s = np.zeros((4, 5), np.uint8)
    fields = dict(height=h, semantic=s, meters_per_pixel=1.0)
    fields.update(kw)
    return CityScene(**fields)


def test_class_table_order():
    assert CLASSES == ("ground", "road", "facade", "roof", "vegetation", "water", "vehicle", "construction")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(height=np.full((4, 5), np.nan, np.float32)), "NaN"),
        (dict(height=np.zeros((0, 5), np.float32), semantic=np.zeros((0, 5), np.uint8)), "empty"),
        (dict(height=np.array([["a"] * 5] * 4)), "real-valued"),
        (dict(semantic=np.zeros((4, 4), np.uint8)), "semantic shape"),
        (dict(semantic=np.full((4, 5), 8)), "outside the class table"),
        (dict(semantic=np.zeros((4, 5), np.float32)), "integer"),
        (dict(meters_per_pixel=0.0), "meters_per_pixel"),
        (dict(meters_per_pixel=-1.0), "meters_per_pixel"),
        (dict(ground=np.ones((4, 5), np.float32)), "ground lies above"),
        (dict(colors=np.zeros((2, 3))), "without points"),
        (dict(points=np.zeros((2, 3)), normals=np.zeros((2, 3))), "unit length"),
        (dict(points=np.zeros((2, 3)), colors=np.full((2, 3), 2.0)), "0..1"),
        (dict(points=np.zeros((2, 3)), point_classes=np.array([0, 9])), "outside the class table"),
        (dict(image=np.zeros((6, 5, 3), np.float32)), "integer multiple"),
        (dict(origin=(0, 0)), "origin"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        _simple(**kw)


def test_instances_are_connected_components():
    sem = np.zeros((5, 7), np.uint8)
    sem[0:2, 0:2] = 3
    sem[3:5, 4:7] = 3
    sem[0, 5] = 6
    inst = label_instances(sem)
    assert len(np.unique(inst[sem == 3])) == 2 and inst[0, 5] == 3 and (inst[sem == 0] == 0).all()


def test_save_load_round_trip(tmp_path, scene):
    path = scene.save(tmp_path / "s")
    loaded = CityScene.load(path)
    assert loaded == scene
    assert loaded.image.dtype == np.float32 and (path / "image.png").is_file()
    # overwriting an existing scene folder works and leaves no temp folders behind
    scene.crop(0, 0, 8, 8).save(path)
    assert CityScene.load(path).shape == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_save_refuses_foreign_folder_and_load_validates(tmp_path, scene):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a scene"):
        scene.save(other)
    with pytest.raises(FileNotFoundError):
        CityScene.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        scene.save(tmp_path / "no" / "parent")
    path = scene.save(tmp_path / "s")
    np.save(path / "height.npy", np.zeros(scene.shape, np.float64))
    with pytest.raises(ValueError, match="dtype"):
        CityScene.load(path)
    meta = json.loads((path / "scene.json").read_text())
    meta["classes"] = ["a"]
    (path / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="class table"):
        CityScene.load(path)


def test_non_8bit_image_round_trips_exactly(tmp_path):
    img = np.full((4, 5, 3), 0.123456, np.float32)
    s = _simple(image=img)
    assert CityScene.load(s.save(tmp_path / "s")) == s


def test_crop_holds_exactly_the_points_inside(scene):
    c = scene.crop(5, 7, 20, 30)
    np.testing.assert_array_equal(c.height, scene.height[5:25, 7:37])
    assert c.origin == (7.0, 5.0, 0.0)
    x, y = scene.points[:, 0], scene.points[:, 1]
    inside = (x >= 7) & (x < 37) & (y >= 5) & (y < 25)
    assert c.num_points == int(inside.sum()) > 0
    row, col = c.point_cells()
    assert row.min() >= 0 and row.max() < 20 and col.min() >= 0 and col.max() < 30
    with pytest.raises(ValueError, match="exceed"):
        scene.crop(40, 0, 20, 20)


def test_tiles_partition_points_and_cover_raster(scene):
    tiles = scene.tiles(16)
    assert len(tiles) == 9 and sum(t.num_points for t in tiles) == scene.num_points
    merged = np.sort(np.concatenate([t.points for t in tiles]), axis=0)
    np.testing.assert_array_equal(merged, np.sort(scene.points, axis=0))
    starts = scene.tile_starts(20, 4)
    assert starts[-1] == (28, 28)  # last tile shifted back to the border
    cover = np.zeros(scene.shape, bool)
    for r, c in starts:
        cover[r : r + 20, c : c + 20] = True
    assert cover.all()
    with pytest.raises(ValueError, match="overlap"):
        scene.tiles(16, 16)


def test_downsample(scene):
    d = scene.downsample(4)
    assert d.shape == (12, 12) and d.meters_per_pixel == 4.0
    assert d.height[0, 0] == scene.height[:4, :4].max()
    assert d.image.shape == (12, 12, 3) and d.num_points == scene.num_points


def _garble_npy_header(path):
    """An unterminated literal in the header dict: numpy's parser raised tokenize's TokenError."""
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"'descr'", b"('descr'", 1))


def _corrupt_meta(path, **changes):
    meta = json.loads((path / "scene.json").read_text())
    meta.update(changes)
    (path / "scene.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: _corrupt_meta(p, files={"height": 5, "semantic": "semantic.npy"}), r"scene\.json: 'files' must map"),
        (lambda p: _corrupt_meta(p, files=["height.npy", "semantic.npy"]), r"scene\.json: 'files' must map"),
        (lambda p: _corrupt_meta(p, origin={"x": 0, "y": 0, "z": 0}), r"/s: origin must be 3 finite numbers"),
        (lambda p: _corrupt_meta(p, metadata=[1, 2]), r"/s: metadata must be a dict"),
        (lambda p: (p / "scene.json").write_bytes(b"\xff\xfe\x00\x81binary"), r"scene\.json is not valid JSON"),
        (lambda p: (p / "scene.json").write_text("[" * 100_000), r"scene\.json is not valid JSON"),
        (lambda p: (p / "height.npy").write_bytes((p / "height.npy").read_bytes()[:100]), r"height\.npy is not a readable"),
        (lambda p: (p / "height.npy").write_bytes(b""), r"height\.npy is not a readable"),
        (lambda p: _garble_npy_header(p / "height.npy"), r"height\.npy is not a readable"),
        (lambda p: (p / "image.png").write_bytes((p / "image.png").read_bytes()[:60]), r"image\.png is not a readable PNG"),
    ],
    ids=[
        "files-entry-int",
        "files-list",
        "origin-dict",
        "metadata-list",
        "binary-json",
        "deep-json",
        "cut-npy",
        "empty-npy",
        "garbled-npy-header",
        "cut-png",
    ],
)
def test_load_refuses_a_malformed_folder_naming_the_file(tmp_path, scene, corrupt, match):
    """Was TypeError / AttributeError / UnicodeDecodeError / EOFError without the file's name."""
    path = scene.save(tmp_path / "s")
    corrupt(path)
    with pytest.raises(ValueError, match=match):
        CityScene.load(path)


def test_load_refuses_an_npy_header_claiming_more_than_the_file_before_allocating(tmp_path):
    path = _simple().save(tmp_path / "s")
    with (path / "height.npy").open("wb") as f:  # 800 GB claimed, 16 bytes held
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (400_000, 500_000)})
        f.write(bytes(16))
    with pytest.raises(ValueError, match=r"height\.npy is not a readable \.npy array"):
        CityScene.load(path)
