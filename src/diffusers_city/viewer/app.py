"""``diffusers-city app``: generate with the shipped defaults in the browser, view the 3D result
and download its files (a viser GUI, like the viewer).

The app lists every system of the registry that declares a demo (``System.has_demo``) and has
its shipped default bundled, so a system appears once its default ships. Each one's demo module
(``diffusers_city.pipelines.<system>.demo``) supplies:

- ``APP_INPUTS``: example inputs, label -> bundled path parts;
- ``APP_UPLOAD_SUFFIXES``: the file types an upload may have (a ``.zip`` is unpacked: a folder);
- ``APP_SETTINGS``: the settings ``generate`` takes besides ``seed`` (``steps``, ``guidance``) and
  their defaults (``None``: the pipeline's own);
- ``load_pipeline(device)`` and ``generate(pipeline, input_path, out_dir, *, seed, **settings)``.
"""

from __future__ import annotations

import importlib
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..export.atomic import atomic_folders, atomic_write
from .content import load_view
from .scene_view import CityView

__all__ = ["AppSystem", "CityApp", "app_systems"]


@dataclass
class AppSystem:
    """A system the app offers: its demo module (the hooks) and its example inputs."""

    name: str
    demo: ModuleType
    examples: dict[str, Path]


def app_systems() -> dict[str, AppSystem]:
    """The systems with a demo and shipped weights, by name."""
    from .._registration import systems
    from ..presets import bundled_path

    found = {}
    for name, entry in systems().items():
        if not entry.has_demo or not bundled_path(name, "default", "model_index.json").is_file():
            continue
        demo = importlib.import_module(entry.demo_module)
        examples = {label: bundled_path(*parts) for label, parts in demo.APP_INPUTS.items()}
        found[name] = AppSystem(name, demo, {label: path for label, path in examples.items() if path.exists()})
    return found


def _unpack(archive: Path) -> Path:
    """Unpack an uploaded ``.zip`` next to it; the folder (or its one subfolder) it holds."""
    target = archive.with_suffix("")
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise ValueError(f"{archive.name}: unsafe path {member!r} in the archive")
        with atomic_folders(target) as (tmp,):
            zf.extractall(tmp)
    children = [c for c in target.iterdir() if not c.name.startswith((".", "__MACOSX"))]
    return children[0] if len(children) == 1 and children[0].is_dir() else target


class CityApp:
    """The app's GUI on ``server``: system, input (example or upload), settings, Generate, the
    result's 3D view and a download of its files. Runs go to ``out_root/<system>_<n>/``."""

    def __init__(self, server, out_root: Path, device: str, systems: dict[str, AppSystem] | None = None) -> None:
        self.server, self.out_root, self.device = server, Path(out_root), device
        self.systems = app_systems() if systems is None else systems
        if not self.systems:
            raise FileNotFoundError("no system has a demo and shipped weights: nothing for the app to run")
        self._pipelines: dict[str, object] = {}
        self._uploads: dict[str, Path] = {}
        self._lock = threading.Lock()
        self.view: CityView | None = None
        self.result: Path | None = None
        gui = server.gui
        gui.add_markdown(f"**diffusers-city app**: a 3D city from the shipped defaults, on `{device}`")
        self.system = gui.add_dropdown("system", tuple(self.systems))
        self.input = gui.add_dropdown("input", ("-",))
        self.upload = gui.add_upload_button("upload an input", icon=None)
        self.seed = gui.add_number("seed", 0, min=0, step=1)
        self.steps = gui.add_number("steps", 50, min=1, max=1000, step=1)
        self.guidance = gui.add_text("guidance", "", hint="classifier-free guidance scale; empty: the model's default")
        self.button = gui.add_button("Generate")
        self.status = gui.add_markdown("Pick a system and an input, then Generate.")
        self.download = gui.add_button("Download files (.zip)", disabled=True)
        self.system.on_update(lambda _: self._system_changed())
        self.upload.on_upload(lambda event: self._uploaded(event.target.value))
        self.button.on_click(lambda _: self.run())
        self.download.on_click(lambda event: self._send_zip(event.client))
        self._system_changed()

    # ------------------------------------------------------------------ GUI callbacks
    @property
    def current(self) -> AppSystem:
        return self.systems[self.system.value]

    def _system_changed(self) -> None:
        system = self.current
        options = [*system.examples, *(f"uploaded: {name}" for name in self._uploads)]
        self.input.options = tuple(options) or ("-",)
        self.input.value = self.input.options[0]
        settings = system.demo.APP_SETTINGS
        self.steps.visible = "steps" in settings
        self.guidance.visible = "guidance" in settings
        if "steps" in settings:
            self.steps.value = settings["steps"]
        self.upload.hint = "accepted: " + ", ".join(system.demo.APP_UPLOAD_SUFFIXES)

    def _uploaded(self, file) -> None:
        suffixes = self.current.demo.APP_UPLOAD_SUFFIXES
        name = Path(file.name).name
        if not name.lower().endswith(suffixes):
            self.status.content = f"**{name}**: not an input of {self.current.name} ({', '.join(suffixes)})"
            return
        path = self.out_root / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_bytes(file.content)
        self._uploads[name] = _unpack(path) if path.suffix.lower() == ".zip" else path
        self._system_changed()
        self.input.value = f"uploaded: {name}"
        self.status.content = f"uploaded {name}"

    def _input_path(self) -> Path:
        label = self.input.value
        if label.startswith("uploaded: "):
            return self._uploads[label[len("uploaded: ") :]]
        if label not in self.current.examples:
            raise ValueError(f"no input selected for {self.current.name}")
        return self.current.examples[label]

    def _settings(self) -> dict:
        """The settings the current system takes, read from the GUI (bad values: ``ValueError``)."""
        settings = {}
        keys = self.current.demo.APP_SETTINGS
        if "steps" in keys:
            settings["steps"] = int(self.steps.value)
        if "guidance" in keys:
            text = self.guidance.value.strip()
            try:
                settings["guidance"] = float(text) if text else None
            except ValueError:
                raise ValueError(f"guidance must be a number, got {text!r}") from None
        return settings

    # ------------------------------------------------------------------ generation
    def run(self) -> Path | None:
        """Generate with the GUI's choices (what Generate does); the output folder, None on failure."""
        if not self._lock.acquire(blocking=False):
            return None
        self.button.disabled = True
        try:
            system = self.current
            source, settings, seed = self._input_path(), self._settings(), int(self.seed.value)
            self.status.content = f"generating with {system.name} on {self.device} ..."
            if system.name not in self._pipelines:
                self._pipelines[system.name] = system.demo.load_pipeline(self.device)
            self.out_root.mkdir(parents=True, exist_ok=True)
            n = sum(1 for p in self.out_root.glob(f"{system.name}_*") if p.is_dir())
            folder = self.out_root / f"{system.name}_{n:03d}"
            with atomic_folders(folder) as (tmp,):
                written = system.demo.generate(self._pipelines[system.name], source, tmp, seed=seed, **settings)
            self.show(folder)
            names = ", ".join(Path(p).name for p in written)
            self.status.content = f"**done**: {system.name}, {source.name}, seed {seed}: wrote {names} to `{folder}`"
            self.download.disabled = False
            return folder
        except Exception as error:  # shown in the GUI; the app keeps serving
            self.status.content = f"**failed**: {type(error).__name__}: {error}"
            return None
        finally:
            self.button.disabled = False
            self._lock.release()

    def show(self, folder: Path) -> None:
        """View ``folder`` in place of the previous result."""
        content = load_view(folder)
        if self.view is not None:
            self.view.remove()
        self.view = CityView(self.server, content, root="/result", title=f"result: {folder.name}")
        self.result = folder

    def zip_bytes(self) -> bytes:
        """The last result's files as a zip archive."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(self.result.rglob("*")):
                if path.is_file():
                    zf.write(path, Path(self.result.name) / path.relative_to(self.result))
        return buffer.getvalue()

    def _send_zip(self, client) -> None:
        if self.result is not None and client is not None:
            client.send_file_download(f"{self.result.name}.zip", self.zip_bytes())
