"""``diffusers-city scene``: a small procedural scene and the real LiDAR sample, every export."""

import argparse
from pathlib import Path

import laspy
import numpy as np
import pytest

from diffusers_city.cli import scene as cli_scene
from diffusers_city.data import CityScene
from diffusers_city.data.readers import read_point_cloud
from diffusers_city.export import read_gaussian_ply

REAL_LAZ = Path(__file__).resolve().parents[1] / "docs" / "data" / "autzen_trim.laz"
EXPECTED = [
    "mesh.glb",
    "mesh.obj",
    "points.las",
    "points.laz",
    "points.ply",
    "preview_oblique.png",
    "preview_top.png",
    "splat.ply",
]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_scene.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_procedural_scene_all_formats(tmp_path):
    out = tmp_path / "city"
    argv = ("--seed", "3", "--size", "48", "--points-per-m2", "1", "--splat-sh-degree", "0", "--formats", "all")
    assert cli_scene.run(_args(*argv, "--out", str(out))) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert [n for n in EXPECTED if n not in names] == []
    scene = CityScene.load(out / "scene")
    assert scene.metadata["seed"] == 3 and scene.shape == (48, 48)
    ply = read_point_cloud(out / "points.ply")
    np.testing.assert_allclose(ply.points, scene.points, atol=1e-3)
    np.testing.assert_array_equal(ply.classes, scene.point_classes)
    assert len(read_gaussian_ply(out / "splat.ply").means) == scene.num_points


def test_default_formats_leave_the_splat_out_and_sizes_are_said_before_writing(tmp_path, capsys, monkeypatch):
    """The default writes no 3DGS PLY (232 MB for 300 m), and says the sizes before it writes."""
    out = tmp_path / "city"
    said = []
    save = CityScene.save
    monkeypatch.setattr(CityScene, "save", lambda self, path: said.append(capsys.readouterr().out) or save(self, path))
    assert cli_scene.run(_args("--seed", "3", "--size", "48", "--points-per-m2", "1", "--out", str(out))) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "mesh.glb",
        "points.ply",
        "preview_oblique.png",
        "preview_top.png",
    ]
    assert said[0].startswith("writing about ") and "points.ply" in said[0] and "splat" not in said[0]
    estimate = cli_scene.estimated_sizes(CityScene.load(out / "scene"), ["ply"])["points.ply"]
    assert 0.5 < estimate / (out / "points.ply").stat().st_size < 2.0


def test_scene_from_real_lidar(tmp_path):
    out = tmp_path / "autzen"
    assert (
        cli_scene.run(_args("--from", str(REAL_LAZ), "--meters-per-pixel", "3", "--formats", "ply,las", "--out", str(out))) == 0
    )
    las = laspy.read(str(out / "points.las"))
    src = laspy.read(str(REAL_LAZ))
    # written back in the CRS's own unit (international feet), at the original positions
    np.testing.assert_allclose(np.sort(np.asarray(las.x)), np.sort(np.asarray(src.x)), atol=2e-3)
    assert "foot" in read_point_cloud(out / "points.las").crs


def test_bad_arguments_write_nothing(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli_scene.run(_args("--from", str(tmp_path / "missing.laz"), "--out", str(out)))
    with pytest.raises(ValueError, match="formats"):
        cli_scene.run(_args("--formats", "ply,fbx", "--out", str(out)))
    with pytest.raises(ValueError, match="--size"):
        cli_scene.run(_args("--size", "-5", "--out", str(out)))
    assert not out.exists()
