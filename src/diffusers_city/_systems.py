"""The registry of systems and lazy package exports, importable without torch or diffusers.

Every package under ``diffusers_city.pipelines`` that defines ``SYSTEM`` (a :class:`System`) is a
system, found by :func:`systems`; a new family adds its folders and is picked up by the package
exports, the CLI and the demo. Family packages export their classes lazily
(:func:`lazy_exports`), so the CLI lists the systems and builds their parsers without importing
a pipeline (``diffusers-city --help`` in a fraction of a second).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIBRARY = "diffusers_city"


@dataclass(frozen=True)
class System:
    """One family of the package, declared as ``SYSTEM`` in ``diffusers_city/pipelines/<name>/__init__.py``.

    Attributes:
        name: the family's folder under ``pipelines/`` (the package and the bundled presets /
            weights of top-level ``pipelines/<name>/``) and its ``diffusers-city generate`` name.
        pipeline: the name of its ``DiffusionPipeline`` class.
        description: one line for the CLI's help.
        has_demo: whether ``diffusers-city demo`` runs it (False for a family that has no trained
            default yet: the demo neither runs nor lists it).
    """

    name: str
    pipeline: str
    description: str
    has_demo: bool = True

    @property
    def module(self) -> str:
        return f"{LIBRARY}.pipelines.{self.name}"

    @property
    def demo_module(self) -> str:
        """Module whose ``run_demo(out_dir, device) -> list[Path]`` runs the shipped default."""
        return f"{self.module}.demo"

    @property
    def cli_module(self) -> str:
        """Module with ``add_arguments(parser)`` and ``run(args) -> int`` of ``diffusers-city generate <name>``."""
        return f"{self.module}.cli"

    def pipeline_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.pipeline)


def family_packages(package: str) -> list[str]:
    """Full names of the subpackages of ``package`` (e.g. ``diffusers_city.pipelines``), sorted."""
    parent = importlib.import_module(package)
    return sorted(f"{package}.{m.name}" for m in pkgutil.iter_modules(parent.__path__) if m.ispkg)


def systems() -> dict[str, System]:
    """Every system of the package by name (the ``SYSTEM`` of each ``diffusers_city.pipelines`` subpackage)."""
    found = {}
    for name in family_packages(f"{LIBRARY}.pipelines"):
        system = getattr(importlib.import_module(name), "SYSTEM", None)
        if isinstance(system, System):
            found[system.name] = system
    return found


def lazy_exports(namespace: dict[str, Any], sources: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for the package whose ``globals()`` is ``namespace``:
    name ``n`` is imported from its submodule ``sources[n]`` on first use and kept in the package."""

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{namespace['__name__']}.{sources[name]}"), name)
        namespace[name] = value
        return value

    return __getattr__


def lazy_family_exports(namespace: dict[str, Any]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` of a package re-exporting the ``__all__`` of each of its
    subpackages, each imported when one of its names is first used."""
    package = namespace["__name__"]
    sources = {}
    for module_name in family_packages(package):
        sources.update(dict.fromkeys(importlib.import_module(module_name).__all__, module_name.rpartition(".")[2]))
    return list(sources), lazy_exports(namespace, sources)
