"""The interactive 3D view of a :class:`~diffusers_city.viewer.content.ViewContent` on a viser server.

viser renders point clouds, meshes and 3D Gaussian splats in the browser (three.js, its splat
sorter in a web worker) and builds the GUI from Python, so one library serves both the viewer
and the app, from the wheel's prebuilt client (no npm, no network at run time).

Display frame: ``(world - offset) * factor`` with ``offset`` at the centre of the content and
``factor`` making the focus area about ``DISPLAY_SIZE`` units across, so that float32 keeps
centimetres of georeferenced coordinates and viser's keyboard fly speed (2 units / s) suits any
area. Every number shown is in world metres.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from .content import ViewContent
from .layers import GaussianLayer, Layer, MeshLayer, read_file_layers, subsample

__all__ = ["DISPLAY_SIZE", "CityView", "nice_length"]

DISPLAY_SIZE = 50.0
_TILE_CACHE = 32


def nice_length(extent_m: float) -> float:
    """A round length (1, 2 or 5 x 10^k m) of about a quarter of ``extent_m``: the scale bar's."""
    target = max(extent_m, 1e-3) / 4
    power = 10 ** math.floor(math.log10(target))
    return next(m * power for m in (5, 2, 1) if m * power <= target)


def _rgb8(colors: np.ndarray) -> np.ndarray:
    return (np.clip(colors, 0, 1) * 255).round().astype(np.uint8)


class CityView:
    """Layers, layer toggles, semantic colours, level of detail, georeference and scale bar of one
    content on ``server``, its scene under ``root`` and its GUI in a folder; ``remove()`` undoes it.

    Level of detail: a layer above the point / Gaussian budget shows a fixed random subset (the
    GUI says how much); a tiled area shows the tiles nearest the camera (within ``tile_radius_m``,
    at most ``max_tiles``) and outlines of the others, following the camera as it moves.
    """

    def __init__(
        self,
        server,
        content: ViewContent,
        *,
        point_budget: int = 2_000_000,
        gaussian_budget: int = 1_000_000,
        max_tiles: int = 9,
        root: str = "/city",
        title: str | None = None,
    ) -> None:
        self.server, self.content, self.root = server, content, root
        bounds = content.bounds
        self.extent = float(max(np.ptp(bounds[:, :2], axis=0).max(), 1.0))
        focus = self.extent
        if content.tiles is not None:
            focus = float(np.median([np.ptp(t.bounds, axis=0).max() for t in content.tiles.tiles])) * 3
            focus = min(focus, self.extent)
        self.offset = np.array([*(bounds[0, :2] + bounds[1, :2]) / 2, bounds[0, 2]])
        self.factor = DISPLAY_SIZE / focus
        self.bar_m = nice_length(focus)
        self._handles: dict[str, object] = {}
        self._layers: dict[str, Layer] = {}
        self._tile_layers: OrderedDict[str, list[Layer]] = OrderedDict()
        self._shown_tiles: list[str] = []
        self._static: list[object] = []
        self._camera_xy: np.ndarray | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._build_gui(title or str(content.source), point_budget, gaussian_budget, max_tiles)
        self._add_scale_bar()
        for i, layer in enumerate(content.layers):
            self._layers[f"{root}/layers/{i}"] = layer
        self._redraw()
        if content.tiles is not None:
            self._add_tile_outlines()
            self._update_tiles(self.offset[:2])
            server.on_client_connect(self._watch_camera)
            for client in server.get_clients().values():
                self._watch_camera(client)
        self.set_camera("oblique")

    # ------------------------------------------------------------------ frame
    def to_display(self, world: np.ndarray) -> np.ndarray:
        return ((np.asarray(world, dtype=np.float64) - self.offset) * self.factor).astype(np.float32)

    def to_world(self, display: np.ndarray) -> np.ndarray:
        return np.asarray(display, dtype=np.float64) / self.factor + self.offset

    # ------------------------------------------------------------------ GUI
    def _build_gui(self, title: str, point_budget: int, gaussian_budget: int, max_tiles: int) -> None:
        gui = self.server.gui
        self.folder = gui.add_folder("View")
        with self.folder:
            gui.add_markdown(f"**{title}**")
            gui.add_markdown("Drag: orbit, right-drag: pan, scroll: zoom. Fly: W A S D (Q / E down / up), arrows turn.")
            views = gui.add_button_group("Camera", ("oblique", "top", "street"))
            views.on_click(lambda event: self.set_camera(event.target.value))
            with gui.add_folder("Layers"):
                kinds = {type(layer) for layer in self.content.layers}
                if self.content.tiles is not None:
                    kinds = {Layer}  # unknown until tiles load: offer every toggle
                self.toggles = {}
                for label, cls in (("points", None), ("mesh", MeshLayer), ("Gaussians", GaussianLayer)):
                    present = Layer in kinds or any(
                        (cls is None and k not in (MeshLayer, GaussianLayer)) or k is cls for k in kinds
                    )
                    if present:
                        self.toggles[label] = gui.add_checkbox(label, True)
                        self.toggles[label].on_update(lambda _: self._apply_visibility())
                has_classes = self.content.tiles is not None or any(l.classes is not None for l in self.content.layers)
                self.semantic = gui.add_checkbox(
                    "semantic colours",
                    False,
                    disabled=not has_classes,
                    hint="colour by class (ground, road, facade, roof, ...)" if has_classes else "no classes in these files",
                )
                self.semantic.on_update(lambda _: self._redraw())
                self.show_bar = gui.add_checkbox("grid and scale bar", True)
                self.show_bar.on_update(lambda _: self._apply_visibility())
            with gui.add_folder("Level of detail"):
                self.point_budget = gui.add_number("point budget", point_budget, min=1000, step=100_000)
                self.gaussian_budget = gui.add_number("Gaussian budget", gaussian_budget, min=1000, step=100_000)
                self.point_budget.on_update(lambda _: self._redraw())
                self.gaussian_budget.on_update(lambda _: self._redraw())
                if self.content.tiles is not None:
                    self.tile_radius = gui.add_number("tile radius (m)", round(self.extent / 4, 1), min=1.0)
                    self.max_tiles = gui.add_number("max tiles", max_tiles, min=1, max=400, step=1)
                    self.tile_radius.on_update(lambda _: self._update_tiles(self._camera_xy))
                    self.max_tiles.on_update(lambda _: self._update_tiles(self._camera_xy))
                self.lod_text = gui.add_markdown("")
            with gui.add_folder("Georeference"):
                gui.add_markdown(self._georef_text())

    def _georef_text(self) -> str:
        b = self.content.bounds
        size = np.ptp(b, axis=0)
        crs = self.content.crs or "none (local metres)"
        lines = [
            f"CRS: {crs}",
            "view centre (world): x {:.2f}, y {:.2f}, z {:.2f} m".format(*self.offset),
            f"x {b[0, 0]:.2f} .. {b[1, 0]:.2f} m, y {b[0, 1]:.2f} .. {b[1, 1]:.2f} m",
            f"area {size[0]:.1f} x {size[1]:.1f} m"
            + ("" if self.content.tiles else f", heights {b[0, 2]:.1f} .. {b[1, 2]:.1f} m"),
            f"scale bar: {self.bar_m:g} m; grid cells {self.bar_m / 5:g} m",
        ]
        return "  \n".join(lines)

    # ------------------------------------------------------------------ scale bar and grid
    def _add_scale_bar(self) -> None:
        scene, b = self.server.scene, self.content.bounds
        size = np.ptp(b[:, :2], axis=0) * self.factor
        grid = self.server.scene.add_grid(
            f"{self.root}/grid",
            width=float(size[0]) * 1.1,
            height=float(size[1]) * 1.1,
            plane="xy",
            cell_size=self.bar_m / 5 * self.factor,
            section_size=self.bar_m * self.factor,
            position=(0.0, 0.0, -0.01),
        )
        start = np.array([b[0, 0], b[0, 1] - 0.04 * self.extent, b[0, 2]])
        end = start + [self.bar_m, 0.0, 0.0]
        tick = np.array([0.0, 0.015 * self.extent, 0.0])
        segments = np.stack([[start, end], [start - tick, start + tick], [end - tick, end + tick]])
        bar = scene.add_line_segments(
            f"{self.root}/scale_bar", self.to_display(segments), (20, 20, 20), thickness=4.0, thickness_units="screen"
        )
        label = scene.add_label(
            f"{self.root}/scale_bar/label",
            f"{self.bar_m:g} m",
            position=tuple(self.to_display((start + end) / 2 - tick * 2)),
            anchor="top-center",
        )
        self._bar_nodes = [grid, bar, label]
        self._static += self._bar_nodes

    def _add_tile_outlines(self) -> None:
        corners = []
        for tile in self.content.tiles.tiles:
            (x0, y0), (x1, y1) = tile.bounds
            ring = [[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0], [x0, y0, 0]]
            corners += [[ring[k], ring[k + 1]] for k in range(4)]
        world = np.asarray(corners, dtype=np.float64)
        world[..., 2] = self.offset[2]
        outlines = self.server.scene.add_line_segments(
            f"{self.root}/tile_outlines", self.to_display(world), (90, 90, 200), thickness=1.5, thickness_units="screen"
        )
        self._static.append(outlines)

    # ------------------------------------------------------------------ layers
    def _budget(self, layer: Layer) -> int:
        budget = self.gaussian_budget.value if isinstance(layer, GaussianLayer) else self.point_budget.value
        if self.content.tiles is not None:
            budget = budget // max(1, len(self._shown_tiles))
        return max(1, int(budget))

    def _toggle_for(self, layer: Layer):
        label = "mesh" if isinstance(layer, MeshLayer) else "Gaussians" if isinstance(layer, GaussianLayer) else "points"
        return self.toggles.get(label)

    def _add_layer(self, name: str, layer: Layer) -> None:
        scene = self.server.scene
        shown = subsample(layer, self._budget(layer))
        colors = shown.semantic_colors() if self.semantic.value and shown.classes is not None else shown.colors
        pts = self.to_display(shown.points)
        if isinstance(shown, MeshLayer):
            import trimesh

            mesh = trimesh.Trimesh(pts, shown.faces, vertex_colors=_rgb8(colors), process=False)
            handle = scene.add_mesh_trimesh(name, mesh)
        elif isinstance(shown, GaussianLayer):
            handle = scene.add_gaussian_splats(
                name,
                centers=pts,
                covariances=(shown.covariances() * self.factor**2).astype(np.float32),
                rgbs=colors.astype(np.float32),
                opacities=np.asarray(shown.opacities, dtype=np.float32)[:, None],
            )
        else:
            area = float(np.prod(np.maximum(np.ptp(shown.points[:, :2], axis=0), 1e-3)))
            spacing = math.sqrt(area / shown.count)
            handle = scene.add_point_cloud(
                name, pts, _rgb8(colors), point_size=1.5 * spacing * self.factor, precision="float32", point_shape="circle"
            )
        toggle = self._toggle_for(shown)
        handle.visible = toggle is None or toggle.value
        self._handles[name] = handle
        self._shown[name] = (shown.count, layer)

    def _redraw(self) -> None:
        """(Re)send every layer: at start and when the colours or budgets change."""
        with self._lock:
            self._shown: dict[str, tuple[int, Layer]] = {}
            for name, layer in self._layers.items():
                self._add_layer(name, layer)
            for tile in self._shown_tiles:
                for i, layer in enumerate(self._tile_layers[tile]):
                    self._add_layer(f"{self.root}/tiles/{tile}/{i}", layer)
            self._update_lod_text()

    def _apply_visibility(self) -> None:
        with self._lock:
            for name, handle in self._handles.items():
                toggle = self._toggle_for(self._shown[name][1])
                handle.visible = toggle is None or toggle.value
            for node in self._bar_nodes:
                node.visible = self.show_bar.value

    def _update_lod_text(self) -> None:
        lines = []
        for count, layer in self._shown.values():
            note = f"{count:,} of {layer.count:,} (budget)" if count < layer.count else layer.describe()
            lines.append(f"{layer.name}: {note}")
        if self.content.tiles is not None:
            total = len(self.content.tiles.tiles)
            lines.insert(
                0,
                f"tiles: {len(self._shown_tiles)} of {total} loaded, the nearest to the camera within "
                f"{self.tile_radius.value:g} m (max {int(self.max_tiles.value)}); outlines show the others",
            )
        self.lod_text.content = "  \n".join(lines) or "nothing shown"

    # ------------------------------------------------------------------ tiles near the camera
    def _load_tiles(self, names: list[str]) -> None:
        """Read the tiles ``names`` (kept in a cache of the most recently shown ones)."""
        for name in names:
            if name not in self._tile_layers:
                tile = next(t for t in self.content.tiles.tiles if t.name == name)
                self._tile_layers[name] = [layer for f in tile.files for layer in read_file_layers(f, f"{name}/{f.name}")]
            self._tile_layers.move_to_end(name)
        while len(self._tile_layers) > max(_TILE_CACHE, len(names)):
            self._tile_layers.popitem(last=False)

    def _update_tiles(self, xy: np.ndarray) -> None:
        """Show the tiles nearest ``xy`` (world) and remove the others."""
        with self._lock:
            if self._closed:
                return
            self._camera_xy = np.asarray(xy, dtype=np.float64)
            ranked = sorted(self.content.tiles.tiles, key=lambda t: t.distance(self._camera_xy))
            near = [t.name for t in ranked if t.distance(self._camera_xy) <= self.tile_radius.value] or [ranked[0].name]
            wanted = near[: int(self.max_tiles.value)]
            if wanted == self._shown_tiles:
                return
            for name in [n for n in self._handles if n.startswith(f"{self.root}/tiles/")]:
                self._handles.pop(name).remove()
            self._load_tiles(wanted)
            self._shown_tiles = wanted
            self._redraw()

    def _watch_camera(self, client) -> None:
        def moved(camera) -> None:
            look = self.to_world(camera.look_at)
            if self._camera_xy is None or np.hypot(*(look[:2] - self._camera_xy)) > self.tile_radius.value / 4:
                self._update_tiles(look[:2])

        client.camera.on_update(moved)

    # ------------------------------------------------------------------ cameras
    def camera_pose(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Display ``(position, look_at)`` of a preset camera: ``oblique``, ``top`` or ``street``."""
        b = self.content.bounds
        height = float(b[1, 2] - b[0, 2]) * self.factor
        r = DISPLAY_SIZE
        look = np.array([0.0, 0.0, height * 0.2])
        if kind == "top":
            return np.array([0.0, -0.01 * r, 1.3 * r + height]), look
        if kind == "street":
            return np.array([0.0, -0.45 * r, 2.0 * self.factor + 0.02 * r]), np.array([0.0, 0.2 * r, 0.02 * r])
        return np.array([0.55 * r, -0.75 * r, 0.6 * r + height]), look

    def set_camera(self, kind: str) -> None:
        position, look = self.camera_pose(kind)
        self.server.initial_camera.position = tuple(position)
        self.server.initial_camera.look_at = tuple(look)
        for client in self.server.get_clients().values():
            with client.atomic():
                client.camera.position = tuple(position)
                client.camera.look_at = tuple(look)

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Remove this view's scene nodes and GUI from the server."""
        with self._lock:
            self._closed = True
            for handle in [*self._handles.values(), *self._static]:
                handle.remove()
            self._handles.clear()
            self.folder.remove()
