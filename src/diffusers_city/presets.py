"""Presets and shipped weights bundled with the package.

Top-level ``pipelines/<system>/presets/<size>.json`` holds the component configs of each
model size (``{"_class_name": pipeline class, "components": {name: config}, "scheduler":
config (optional), "config": the pipeline's own settings (optional), "notes": ...}``) and
``pipelines/<system>/default/`` the shipped trained pipeline. The package reaches that folder
through the ``_bundled`` symlink next to this file, which the wheel build resolves into real
files (see ``pipelines/README.md``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

BUNDLED_ROOT = Path(__file__).resolve().parent / "_bundled"


def bundled_path(*parts: str | Path) -> Path:
    """Path of ``parts`` inside the bundled top-level ``pipelines/`` folder (may not exist)."""
    return BUNDLED_ROOT.joinpath(*parts)


def available_systems() -> list[str]:
    """Systems that have a ``presets/`` folder, sorted."""
    if not BUNDLED_ROOT.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_ROOT.iterdir() if (p / "presets").is_dir())


def available_sizes(system: str) -> list[str]:
    """Preset sizes shipped for ``system`` (file stems of ``presets/*.json``), sorted."""
    folder = bundled_path(system, "presets")
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_preset(system: str, size: str) -> dict[str, Any]:
    """Parsed ``pipelines/<system>/presets/<size>.json``.

    Raises ``ValueError`` when ``system`` or ``size`` is not a plain name (no path: they must not
    reach outside the bundled presets) and ``FileNotFoundError`` naming the available systems
    or sizes when the file is missing.
    """
    for what, name in (("system", system), ("size", size)):
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
            raise ValueError(f"preset {what} must be a plain name like 'sat2city' / 'tiny', got {name!r}")
    path = bundled_path(system, "presets", f"{size}.json")
    if not path.is_file():
        sizes = available_sizes(system)
        if not sizes:
            raise FileNotFoundError(
                f"no presets for system {system!r} under {bundled_path()}; systems with presets: {available_systems() or 'none'}"
            )
        raise FileNotFoundError(f"no preset {size!r} for {system!r} ({path}); available sizes: {sizes}")
    return read_preset(path)


def read_preset(path: str | Path) -> dict[str, Any]:
    """Parsed preset JSON at ``path``; ``ValueError`` when it is not a preset object."""
    with Path(path).open() as f:
        preset = json.load(f)
    if not isinstance(preset, dict) or not isinstance(preset.get("components"), dict):
        raise ValueError(f"{path}: a preset is a JSON object with a 'components' object")
    return preset


def _class_from_config(config: dict[str, Any], where: str) -> type:
    """The diffusers-city or diffusers class named by a config's ``_class_name``."""
    import diffusers

    import diffusers_city

    name = config.get("_class_name")
    if not isinstance(name, str):
        raise ValueError(f"{where} has no '_class_name' naming its class")
    cls = getattr(diffusers_city, name, None) or getattr(diffusers, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"{where}: class {name!r} is neither in diffusers_city nor in diffusers")
    return cls


def build_pipeline(system: str, size: str, seed: int = 0):
    """An untrained pipeline of ``system`` at ``size``, with weights initialised from ``seed``
    (``build_from_preset`` of ``load_preset(system, size)``)."""
    return build_from_preset(load_preset(system, size), seed=seed, where=f"preset {system}/{size}")


def build_from_preset(preset: dict[str, Any], seed: int = 0, where: str = "preset"):
    """An untrained pipeline from a parsed preset, with weights initialised from ``seed``.

    Each component is ``cls.from_config(config)`` where ``cls`` is named by the config's
    ``_class_name`` (looked up on ``diffusers_city``, then ``diffusers``); the optional
    ``"scheduler"`` config becomes the ``scheduler`` argument and the optional ``"config"`` object
    the pipeline's keyword settings; the pipeline class is the preset's top-level ``_class_name``.
    The global torch RNG is left untouched.
    """
    pipeline_cls = _class_from_config(preset, where)
    configs = dict(preset["components"])
    if "scheduler" in preset:
        configs["scheduler"] = preset["scheduler"]
    classes = {name: _class_from_config(cfg, f"{where} component {name!r}") for name, cfg in configs.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = {name: classes[name].from_config(cfg) for name, cfg in configs.items()}
    settings = preset.get("config", {})
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: 'config' must be an object of pipeline settings, got {type(settings).__name__}")
    return pipeline_cls(**components, **settings)
