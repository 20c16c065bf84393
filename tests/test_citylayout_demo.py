"""CityLayout demo and CLI on tiny pipelines: what they write, and their refusals."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusers_city import CityLayoutGaussianCityPipeline, CityLayoutPipeline, GaussianCityPipeline
from diffusers_city.cli import main
from diffusers_city.data import CityScene, procedural_city
from diffusers_city.pipelines.citylayout import demo
from diffusers_city.pipelines.gaussiancity import demo as gaussiancity_demo


@pytest.fixture(autouse=True)
def short_orbit(monkeypatch):
    """Fewer, smaller frames than the demo's: what is written is the same."""
    monkeypatch.setattr(gaussiancity_demo, "DEMO_FRAMES", 3)
    monkeypatch.setattr(gaussiancity_demo, "DEMO_SIZE", (64, 48))
    monkeypatch.setattr(gaussiancity_demo, "FRAME_SIZE", (160, 120))


@pytest.fixture(scope="module")
def combined():
    pipe = CityLayoutGaussianCityPipeline.from_pipes(
        CityLayoutPipeline.from_preset("tiny", seed=0), GaussianCityPipeline.from_preset("tiny", seed=0)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_demo_generates_a_layout_and_its_orbit(combined, tmp_path):
    paths = demo.generate(combined, None, tmp_path / "out", steps=2, size_m=64.0)
    names = sorted(p.name for p in paths)
    assert names == ["city.ply", "frame_000.png", "input_output.png", "layout", "layout.png", "orbit.gif"]
    scene = CityScene.load(tmp_path / "out" / "layout")
    assert scene.shape == (64, 64) and scene.metadata["generator"] == "CityLayoutPipeline"
    with Image.open(tmp_path / "out" / "layout.png") as im:
        assert im.width >= 2 * demo.PREVIEW_PX
    with Image.open(tmp_path / "out" / "orbit.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (64, 48)


def test_demo_outpaints_a_scene_folder_around_it(combined, tmp_path):
    city = procedural_city(4, size_m=40.0, with_points=False, with_image=False, origin=(1000.0, 2000.0, 0.0))
    city.save(tmp_path / "small")
    demo.generate(combined, tmp_path / "small", tmp_path / "out", steps=2)
    scene = CityScene.load(tmp_path / "out" / "layout")
    assert scene.shape == (80, 80) and scene.origin == (980.0, 1980.0, 0.0)
    assert np.array_equal(scene.semantic[20:60, 20:60], city.semantic)
    canvas, mask = demo.outpaint_canvas(city)
    assert mask.sum() == 80 * 80 - 40 * 40 and not mask[20:60, 20:60].any()


def test_cli_writes_a_scene_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "layout"
    assert (
        main(
            [
                "generate",
                "citylayout",
                "--preset",
                "tiny",
                "--width-m",
                "48",
                "--height-m",
                "40",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    scene = CityScene.load(out / "scene")
    assert scene.shape == (40, 48) and (out / "layout.png").is_file()
    assert "wrote a 48 x 40 m layout" in capsys.readouterr().out
    mask = np.zeros((40, 48), bool)
    mask[:, 24:] = True
    np.save(tmp_path / "mask.npy", mask)
    filled = tmp_path / "filled"
    args = ["generate", "citylayout", "--preset", "tiny", "--scene", str(out), "--mask", str(tmp_path / "mask.npy")]
    assert main([*args, "--steps", "2", "--out", str(filled)]) == 0
    assert np.array_equal(CityScene.load(filled / "scene").semantic[:, :24], scene.semantic[:, :24])
    assert json.loads((filled / "scene" / "scene.json").read_text())
    for bad, message in (
        (["--width-m", "48"], "pass --width-m and --height-m, or --scene"),
        (["--scene", str(out)], "--scene needs --mask"),
        (["--width-m", "48", "--height-m", "40", "--mask", str(tmp_path / "mask.npy")], "--mask needs --scene"),
        (["--width-m", "-4", "--height-m", "40"], "width_m must be > 0"),
    ):
        assert main(["generate", "citylayout", "--preset", "tiny", *bad, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
