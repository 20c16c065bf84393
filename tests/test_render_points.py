"""Z-buffered point-cloud previews."""

import numpy as np
import pytest
import torch

from diffusers_city.render import render_points_preview

BG = (255, 255, 255)


def test_top_view_size_and_points_land_where_expected():
    # a 10 x 8 m red floor at z = 0 and a blue 2 x 2 m roof at z = 5 in its +x/+y corner
    xs, ys = np.meshgrid(np.linspace(0, 10, 101), np.linspace(0, 8, 81))
    floor = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], -1)
    rx, ry = np.meshgrid(np.linspace(8, 10, 21), np.linspace(6, 8, 21))
    roof = np.stack([rx.ravel(), ry.ravel(), np.full(rx.size, 5.0)], -1)
    pts = np.concatenate([floor, roof])
    cols = np.concatenate([np.tile([1.0, 0.0, 0.0], (len(floor), 1)), np.tile([0.0, 0.0, 1.0], (len(roof), 1))])
    img = np.asarray(render_points_preview(pts, cols, view="top", width=100, height=80, shading=False))
    assert img.shape == (80, 100, 3)
    assert (img[40, 30] == [255, 0, 0]).all()  # floor near the middle
    assert (img[75, 95] == [0, 0, 255]).all()  # roof: high x -> right, high y -> bottom (raster rows)
    assert (img[0, :] == BG).all(axis=-1).mean() > 0.5  # margin stays background
    shaded = np.asarray(render_points_preview(pts, cols, view="oblique", width=64, height=48))
    assert shaded.shape == (48, 64, 3) and (shaded != 255).any(axis=-1).sum() > 200


def test_nearest_point_wins_and_torch_input():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img = np.asarray(render_points_preview(pts, cols, view="top", width=20, height=20, shading=False, point_size=1))
    drawn = img[(img != 255).any(axis=-1)]
    assert any((c == [0, 255, 0]).all() for c in drawn) and not any((c == [255, 0, 0]).all() for c in drawn)
    assert any((c == [0, 0, 255]).all() for c in drawn)


def test_empty_and_uncoloured_clouds():
    img = render_points_preview(np.zeros((0, 3)), None, width=16, height=12)
    assert img.size == (16, 12) and (np.asarray(img) == 255).all()
    img = render_points_preview(np.random.default_rng(0).normal(size=(500, 3)), None, width=32, height=32)
    assert (np.asarray(img) != 255).any()


def test_bad_input():
    with pytest.raises(ValueError, match="points"):
        render_points_preview(np.zeros((4, 2)), None)
    with pytest.raises(ValueError, match="colors"):
        render_points_preview(np.zeros((4, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        render_points_preview(np.full((4, 3), np.nan), None)
    with pytest.raises(ValueError, match="image size"):
        render_points_preview(np.zeros((4, 3)), None, width=0)
    with pytest.raises(ValueError, match="view"):
        render_points_preview(np.zeros((4, 3)), None, view="side")


def _background_rows(image: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    """Per image row inside the silhouette: the fraction of background pixels between its first and
    last drawn pixel (rows near the silhouette's top and bottom corners left out)."""
    drawn = ~(image == background).all(axis=-1)
    rows = np.flatnonzero(drawn.any(axis=1))
    inner = rows[len(rows) // 10 : -len(rows) // 10]
    fractions = []
    for r in inner:
        cols = np.flatnonzero(drawn[r])
        fractions.append(1.0 - drawn[r, cols[0] : cols[-1] + 1].mean())
    return np.array(fractions)


def test_a_grid_sampled_surface_has_no_white_rows():
    """The Sat2City preview artefact: voxel-centre points 2-3 px apart drawn as 2 px squares left
    background rows every ~10 px; squares as wide as the spacing leave none."""
    x, y = np.meshgrid(np.arange(128.0), np.arange(128.0))
    points = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    colors = np.full_like(points, 0.4)
    image = np.asarray(render_points_preview(points, colors, width=512, height=512, shading=False))
    assert _background_rows(image).max() < 0.02


def _drawn_width(image) -> int:
    cols = np.flatnonzero((np.asarray(image) != 255).any(axis=-1).any(axis=0))
    return int(cols[-1] - cols[0] + 1)


def test_orbit_framing_keeps_one_scale_and_centre_at_every_azimuth():
    """A square slab seen side-on (azimuth 0) and corner-on (45): fitted per view both fill the
    width; with ``framing="orbit"`` the side-on view is 1/sqrt(2) as wide, centred the same."""
    x, y = np.meshgrid(np.linspace(0, 100, 101), np.linspace(0, 100, 101))
    points = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1) + [1000.0, 2000.0, 0.0]
    kwargs = dict(width=200, height=150, shading=False, point_size=2)
    view = [_drawn_width(render_points_preview(points, None, azimuth_deg=a, **kwargs)) for a in (0.0, 45.0)]
    orbit = [render_points_preview(points, None, azimuth_deg=a, framing="orbit", **kwargs) for a in (0.0, 45.0)]
    assert abs(view[0] - view[1]) <= 2
    assert abs(_drawn_width(orbit[0]) / _drawn_width(orbit[1]) - 2**-0.5) < 0.03
    centres = [np.flatnonzero((np.asarray(o) != 255).any(axis=-1).any(axis=0)).mean() for o in orbit]
    assert abs(centres[0] - centres[1]) < 2 and abs(centres[0] - 100) < 2
    with pytest.raises(ValueError, match="framing"):
        render_points_preview(points, None, framing="fit")
