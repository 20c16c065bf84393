"""One vocabulary across ``generate <system>``: ``--pipeline``, dashed flags, one device default,
earlier spellings still accepted with a warning; ``scene --out X`` output accepted as ``--scene X``."""

import re

import pytest

from diffusers_city import cli
from diffusers_city.data import procedural_city

SYSTEMS = sorted(cli.registered_systems())


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("system", SYSTEMS)
def test_generate_commands_share_flag_names_and_device_default(capsys, system):
    text = _help(capsys, "generate", system)
    assert "--pipeline PIPELINE" in text
    assert "cuda when available, else cpu" in text
    assert re.findall(r"--[a-z0-9]+_[a-z0-9_]*", text) == []  # dashed flags only
    for hidden in ("--model", "--pretrained", "--decode_chunk_size"):
        assert hidden not in text


@pytest.mark.parametrize(
    ("argv", "dest", "value"),
    [
        (["generate", "sat2city", "--height-map", "h.png", "--out", "o", "--model", "M"], "pipeline", "M"),
        (["generate", "earthcrafter", "--out", "o", "--pretrained", "tiny"], "pipeline", "tiny"),
        (["generate", "gaussiancity", "--scene", "s", "--out", "o", "--decode_chunk_size", "4"], "decode_chunk_size", 4),
    ],
)
def test_earlier_spellings_still_work_and_warn(capsys, argv, dest, value):
    args = cli.build_parser(argv).parse_args(argv)
    assert getattr(args, dest) == value
    old = next(a for a in argv if "_" in a or a in ("--model", "--pretrained"))
    assert f"{old} is deprecated, use --" in capsys.readouterr().err


def test_earthcrafter_without_pipeline_is_a_usage_error(capsys, tmp_path):
    assert cli.main(["generate", "earthcrafter", "--out", str(tmp_path / "o")]) == 2
    assert "--pipeline is required" in capsys.readouterr().err


def test_scene_out_folder_is_accepted_as_a_scene(capsys, tmp_path):
    """``diffusers-city scene --out X`` writes ``X/scene``; ``--scene X`` finds it there."""
    (tmp_path / "X").mkdir()
    procedural_city(3, size_m=48.0, with_points=False, with_image=False).save(tmp_path / "X" / "scene")
    out = tmp_path / "frames_out"
    argv = ["generate", "gaussiancity", "--scene", str(tmp_path / "X"), "--out", str(out), "--preset", "tiny"]
    assert cli.main([*argv, "--frames", "2", "--width", "16", "--height", "12", "--device", "cpu"]) == 0
    assert len(list((out / "frames").glob("*.png"))) == 2
    (tmp_path / "empty").mkdir()
    assert cli.main(["generate", "gaussiancity", "--scene", str(tmp_path / "empty"), "--out", str(out), "--preset", "tiny"]) == 3
    assert f"make one with: diffusers-city scene --out {tmp_path / 'empty'}" in capsys.readouterr().err
