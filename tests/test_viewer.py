"""``diffusers-city view`` and ``app``: bad inputs are refused before the server starts; in a
headless Chromium (``tests/browser.py``) the page loads, the scene draws (the screenshot's pixels
are checked) and the server stops cleanly on SIGTERM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diffusers_city.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import Browser, drawn_fraction, find_chromium, scene_pixels, served, wait_for_drawing  # noqa: E402

pytest.importorskip("viser", reason="the viewer extra (viser) is not installed")

needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium (Debian package chromium; .ci/run installs it where it can)"
)


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if a server is started."""
    from diffusers_city.viewer import server

    def refuse(*args, **kwargs):
        raise AssertionError("the server started before the input was checked")

    monkeypatch.setattr(server, "start_server", refuse)


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda tmp: tmp / "missing.ply", 3, "no such file or folder"),
        (lambda tmp: _write(tmp / "notes.txt", b"hello"), 2, "unsupported file type '.txt'"),
        (lambda tmp: _write(tmp / "cut.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n"), 4, "cut.ply"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", 2, "nothing to view"),
    ],
    ids=["missing", "unsupported", "corrupt", "empty-folder"],
)
def test_view_refuses_bad_input_before_serving(tmp_path, capsys, no_server, make, status, words):
    path = make(tmp_path)
    assert main(["view", str(path), "--no-browser", "--port", "0"]) == status
    err = capsys.readouterr().err
    assert err.startswith("diffusers-city view: error: ") and words in err, err


def test_view_refuses_bad_budget_before_reading(tmp_path, capsys, no_server):
    assert main(["view", str(tmp_path / "missing.ply"), "--point-budget", "0", "--no-browser"]) == 2
    assert "--point-budget must be >= 1" in capsys.readouterr().err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def small_output(tmp_path_factory) -> Path:
    """A generated-looking folder: a coloured point cloud PLY and a scene folder."""
    from diffusers_city.data import procedural_city
    from diffusers_city.export.ply import write_point_ply

    folder = tmp_path_factory.mktemp("view") / "out"
    folder.mkdir()
    scene = procedural_city(3, 48, points_per_m2=2)
    scene.save(folder / "scene")
    write_point_ply(folder / "city.ply", scene.points, scene.colors)
    return folder


@needs_chromium
@pytest.mark.slow
def test_view_draws_in_chromium(small_output):
    with served(["view", small_output]) as (url, lines), Browser(1024, 700) as browser:
        browser.goto(url)
        browser.wait_for_text("Georeference")
        browser.wait_for_text("city.ply")
        image = wait_for_drawing(browser, 0.02)
        assert drawn_fraction(scene_pixels(image)) >= 0.02, "the 3D canvas stayed blank"
    assert any("serving at http://127.0.0.1:" in line for line in lines)


@needs_chromium
@pytest.mark.slow
def test_app_generates_and_draws_in_chromium(tmp_path):
    out = tmp_path / "app_out"
    with served(["app", "--device", "cpu", "--out", out]) as (url, lines), Browser(1024, 700) as browser:
        browser.goto(url)
        browser.wait_for_text("Generate")
        before = drawn_fraction(scene_pixels(browser.screenshot()))
        browser.click_button("Generate")  # the first system with its first example input
        browser.wait_for_text("done:", timeout=300)
        image = wait_for_drawing(browser, before + 0.02)
        assert drawn_fraction(scene_pixels(image)) >= before + 0.02, "the result never appeared in the canvas"
    runs = [p for p in out.iterdir() if p.is_dir() and p.name != "uploads"]
    assert len(runs) == 1 and any(runs[0].glob("*.ply")), runs
