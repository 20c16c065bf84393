"""The demos' pictures: captioned side-by-side sheets, north-up rasters, point orbits (export.preview)
and Sat2City's orbit.gif / input_output.png."""

import numpy as np
import pytest
from PIL import Image

from diffusers_city.data import procedural_city
from diffusers_city.export import captioned, grid, raster_image, write_orbit
from diffusers_city.pipelines.sat2city import demo
from diffusers_city.pipelines.sat2city.pipeline_output import Sat2CityPipelineOutput


def panels(sheet: Image.Image, n: int) -> list[np.ndarray]:
    """The ``n`` side-by-side cells of a one-row sheet, as grey arrays."""
    grey = np.asarray(sheet.convert("L"), dtype=np.float64)
    w = sheet.width // n
    return [grey[:, i * w : (i + 1) * w] for i in range(n)]


def test_grid_centres_unequal_tiles_and_captioned_adds_a_bar():
    red, blue = Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (20, 30), (0, 0, 255))
    tile = captioned(red, "red", font_size=10)
    assert tile.size == (40, 20 + 16) and (np.asarray(tile)[16:] == [255, 0, 0]).all()
    assert (np.asarray(captioned(red, "red"))[:28] != [255, 0, 0]).any(axis=-1).all()  # the default bar is white
    sheet = np.asarray(grid([red, blue], 2))
    assert sheet.shape == (30, 80, 3)
    assert (sheet[5:25, 0:40] == [255, 0, 0]).all() and (sheet[0:5, 0:40] == 255).all()  # 5 px above and below
    assert (sheet[:, 50:70] == [0, 0, 255]).all() and (sheet[:, 40:50] == 255).all()
    with pytest.raises(ValueError, match="tiles"):
        grid([], 2)


def test_raster_image_puts_north_up():
    values = np.zeros((4, 3))
    values[3, 0] = 1.0  # the last row is the northernmost (+y)
    image = np.asarray(raster_image(values, (6, 8)))
    assert image.shape == (8, 6, 3) and (image[:2, :2] == 255).all() and (image[2:] == 0).all()
    with pytest.raises(ValueError, match="raster"):
        raster_image(np.zeros((4, 3, 2)), (6, 8))


def test_write_orbit_frames_turn_at_one_scale(tmp_path):
    scene = procedural_city(2, size_m=48.0, points_per_m2=1.0, with_image=False)
    path = write_orbit(tmp_path / "orbit.gif", scene.points, scene.colors, num_frames=4, width=64, height=48)
    gif = Image.open(path)
    assert gif.n_frames == 4 and gif.size == (64, 48)
    frames = []
    for i in range(4):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    assert all(f.std() > 10 for f in frames)
    assert np.abs(frames[0] - frames[1]).mean() > 5  # the view turns
    with pytest.raises(ValueError, match="num_frames"):
        write_orbit(tmp_path / "never.gif", scene.points, num_frames=0)
    assert not (tmp_path / "never.gif").exists()


def test_sat2city_pictures_show_the_input_beside_the_city(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "ORBIT_FRAMES", 3)
    monkeypatch.setattr(demo, "ORBIT_SIZE", (48, 36))
    monkeypatch.setattr(demo, "PANEL_SIZE", (80, 64))
    scene = procedural_city(4, size_m=48.0, points_per_m2=1.0, with_image=False)
    gray = np.round(scene.height / scene.height.max() * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "height.png")
    output = Sat2CityPipelineOutput(points=scene.points, colors=scene.colors.astype(np.float32) * 1.2)  # clipped
    paths = demo.write_pictures(output, tmp_path / "height.png", tmp_path, steps=7)
    assert [p.name for p in paths] == ["orbit.gif", "input_output.png"]
    gif = Image.open(paths[0])
    assert gif.n_frames == 3 and gif.size == (48, 36)
    sheet = Image.open(paths[1])
    assert sheet.size == (2 * 80, 64 + 32)  # two cells of the render's size, a 20 px font's caption bar
    left, right = panels(sheet, 2)
    assert left[32:].std() > 20 and right[32:].std() > 10  # neither panel is blank
    assert (left[32:, :8] == 255).all()  # the square map is centred in the wider cell
