"""Style knobs of `procedural_city` and the per-district-kind tables they scale."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

# District kinds. Every per-kind table below is indexed by these ids.
DOWNTOWN, MIDRISE, RESIDENTIAL, INDUSTRIAL, PARKLAND = range(5)
KIND_NAMES = ("downtown", "midrise", "residential", "industrial", "parkland")

# Block types.
B_BUILDINGS, B_PARK, B_PLAZA, B_PARKING, B_WATER, B_CONSTRUCTION = range(6)

# Footprint shapes.
S_RECT, S_L, S_COURTYARD, S_TOWER, S_ROUND = range(5)


@dataclass(frozen=True)
class KindTable:
    """Per-district-kind parameters (one row per kind, in `KIND_NAMES` order)."""

    block_pitch: np.ndarray = field(  # block + road period range (m)
        default_factory=lambda: np.array([[70, 115], [80, 135], [60, 105], [110, 190], [150, 240]], float)
    )
    road_width: np.ndarray = field(default_factory=lambda: np.array([[14, 20], [12, 16], [8, 12], [12, 16], [8, 10]], float))
    sidewalk: np.ndarray = field(default_factory=lambda: np.array([4.0, 3.0, 2.0, 1.5, 2.0]))
    lot_size: np.ndarray = field(default_factory=lambda: np.array([34.0, 28.0, 17.0, 55.0, 40.0]))
    setback: np.ndarray = field(  # building setback range inside a lot (m)
        default_factory=lambda: np.array([[0.0, 3.0], [0.0, 4.0], [2.5, 5.5], [4.0, 10.0], [6.0, 12.0]])
    )
    height: np.ndarray = field(  # median, log-sigma, min, max (m)
        default_factory=lambda: np.array(
            [[42, 0.55, 12, 220], [17, 0.35, 7, 40], [7, 0.25, 3.5, 12], [9, 0.3, 5, 18], [6, 0.3, 3.5, 10]], float
        )
    )
    floor_height: np.ndarray = field(
        default_factory=lambda: np.array([[3.6, 4.2], [3.1, 3.6], [2.8, 3.2], [4.5, 6.0], [3.0, 3.5]])
    )
    block_types: np.ndarray = field(  # buildings, park, plaza, parking, water, construction
        default_factory=lambda: np.array(
            [
                [0.80, 0.05, 0.08, 0.04, 0.00, 0.03],
                [0.81, 0.08, 0.03, 0.04, 0.01, 0.03],
                [0.86, 0.08, 0.00, 0.02, 0.02, 0.02],
                [0.72, 0.03, 0.00, 0.17, 0.02, 0.06],
                [0.10, 0.68, 0.05, 0.02, 0.15, 0.00],
            ]
        )
    )
    shapes: np.ndarray = field(  # rect, L, courtyard, tower on podium, round
        default_factory=lambda: np.array(
            [
                [0.30, 0.14, 0.06, 0.42, 0.08],
                [0.35, 0.28, 0.32, 0.00, 0.05],
                [0.72, 0.28, 0.00, 0.00, 0.00],
                [0.85, 0.15, 0.00, 0.00, 0.00],
                [0.80, 0.20, 0.00, 0.00, 0.00],
            ]
        )
    )
    pitched: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.15, 0.8, 0.0, 0.5]))
    street_trees: np.ndarray = field(default_factory=lambda: np.array([0.25, 0.4, 0.55, 0.05, 0.35]))
    cars: np.ndarray = field(default_factory=lambda: np.array([0.45, 0.35, 0.2, 0.25, 0.1]))


@dataclass(frozen=True)
class CityStyle:
    """Style of a procedural city; every field can be passed to `procedural_city` as a keyword.

    Attributes:
        district_size_m: typical district diameter; each district has its own rotated street grid.
        downtown_radius_m: districts whose seed lies within this distance of the city centre
            lean downtown (towers); farther ones lean residential / industrial / parkland.
        kind_weights: base weights of (downtown, midrise, residential, industrial, parkland).
        max_rotation_deg: street grids are rotated by up to this angle per district.
        arterial_width_m: width of the roads along district borders (0 disables them).
        height_scale: multiplies every building height.
        max_building_height_m: caps every building's height (whole floors; roofs and rooftop units
            add a few metres), so a model's data stays inside its vertical extent (None: no cap).
        tree_density: multiplies every tree probability.
        car_density: multiplies every vehicle probability.
        river_probability: chance that a river crosses the map.
        terrain_amplitude_m / terrain_wavelength_m: gentle fBm terrain.
        wall_min_step_m: height steps larger than this get wall points.
        image_scale: aerial image pixels per raster pixel.
        sun_azimuth_deg / sun_elevation_deg: baked shading direction (None: drawn from the seed).
    """

    district_size_m: float = 260.0
    downtown_radius_m: float = 300.0
    kind_weights: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 0.6, 0.35)
    max_rotation_deg: float = 45.0
    arterial_width_m: float = 18.0
    height_scale: float = 1.0
    max_building_height_m: float | None = None
    tree_density: float = 1.0
    car_density: float = 1.0
    river_probability: float = 0.35
    terrain_amplitude_m: float = 3.0
    terrain_wavelength_m: float = 420.0
    wall_min_step_m: float = 0.5
    image_scale: int = 1
    sun_azimuth_deg: float | None = None
    sun_elevation_deg: float | None = 55.0
    kinds: KindTable = field(default_factory=KindTable)

    @classmethod
    def from_kwargs(cls, **style) -> CityStyle:
        """Build a style from keywords, rejecting unknown names and out-of-range values."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(style) - names)
        if unknown:
            raise ValueError(f"unknown style option(s) {unknown}; known: {sorted(names)}")
        out = cls(**style)
        positive = ("district_size_m", "downtown_radius_m", "terrain_wavelength_m")
        non_negative = (
            "arterial_width_m",
            "height_scale",
            "tree_density",
            "car_density",
            "terrain_amplitude_m",
            "wall_min_step_m",
            "max_rotation_deg",
        )
        for name in positive:
            if not float(getattr(out, name)) > 0:
                raise ValueError(f"style option {name} must be > 0, got {getattr(out, name)}")
        for name in non_negative:
            if not float(getattr(out, name)) >= 0:
                raise ValueError(f"style option {name} must be >= 0, got {getattr(out, name)}")
        if out.max_building_height_m is not None and not float(out.max_building_height_m) >= 3:
            raise ValueError(
                f"style option max_building_height_m must be >= 3 (one floor) or None, got {out.max_building_height_m}"
            )
        if not 0 <= out.river_probability <= 1:
            raise ValueError(f"river_probability must be in 0..1, got {out.river_probability}")
        if not isinstance(out.image_scale, int) or out.image_scale < 1:
            raise ValueError(f"image_scale must be an integer >= 1, got {out.image_scale!r}")
        weights = np.asarray(out.kind_weights, float)
        if weights.shape != (5,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"kind_weights must be 5 non-negative numbers with a positive sum, got {out.kind_weights}")
        return out

    def to_json(self) -> dict:
        """JSON-serialisable summary (the kind table is fixed code, so it is left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kinds"}
