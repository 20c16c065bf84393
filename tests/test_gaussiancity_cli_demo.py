"""GaussianCity CLI (`generate gaussiancity`) and demo."""

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from diffusers_city import GaussianCityPipeline
from diffusers_city.cli import main
from diffusers_city.data import procedural_city
from diffusers_city.pipelines.gaussiancity import demo


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "city"
    procedural_city(3, size_m=64.0, with_points=False, with_image=False).save(path)
    return path


def test_generate_writes_frames_video_and_ply(scene_dir, tmp_path):
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            "gaussiancity",
            "--scene",
            str(scene_dir),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--frames",
            "3",
            "--width",
            "24",
            "--height",
            "16",
            "--device",
            "cpu",
            "--decode-chunk-size",
            "2",
        ]
    )
    assert rc == 0
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == 3 and Image.open(frames[0]).size == (24, 16)
    assert Image.open(out / "orbit.gif").n_frames == 3
    assert PlyData.read(str(out / "city.ply"))["vertex"].count > 100


def test_generate_bad_input_fails_before_writing(scene_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["generate", "gaussiancity", "--scene", str(tmp_path / "nope"), "--out", str(out), "--preset", "tiny"]) == 3
    assert "not a scene folder" in capsys.readouterr().err
    assert (
        main(["generate", "gaussiancity", "--scene", str(scene_dir), "--out", str(out), "--preset", "tiny", "--width", "0"]) == 2
    )
    assert (
        main(
            [
                "generate",
                "gaussiancity",
                "--scene",
                str(scene_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--decode-chunk-size",
                "0",
            ]
        )
        == 2
    )
    assert "--decode-chunk-size must be positive" in capsys.readouterr().err
    assert not out.exists()


def test_run_demo_with_given_pipeline(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_FRAMES", 2)
    monkeypatch.setattr(demo, "DEMO_SIZE", (32, 24))
    monkeypatch.setattr(demo, "FRAME_SIZE", (48, 36))
    monkeypatch.setattr(demo, "example_scene", lambda: procedural_city(5, size_m=48.0, with_points=False, with_image=False))
    paths = demo.run_demo(tmp_path, "cpu", pipeline=GaussianCityPipeline.from_preset("tiny"))
    assert [p.name for p in paths] == ["orbit.gif", "frame_000.png", "input_output.png", "city.ply"]
    gif = Image.open(paths[0])
    assert gif.n_frames == 2 and gif.size == (32, 24)
    assert np.asarray(Image.open(paths[1])).std() > 1.0
    sheet = Image.open(paths[2])
    assert sheet.size == (2 * 48, 36 + 32)  # two cells of the frame's size under a 20 px font's caption bar
    grey = np.asarray(sheet.convert("L"), dtype=np.float64)[32:]
    classes, frame = grey[:, :48], grey[:, 48:]
    assert classes[:, 6:42].std() > 10 and frame.std() > 1.0  # neither panel is blank
    assert (classes[:, :6] == 255).all()  # the square map is centred in the wider cell
