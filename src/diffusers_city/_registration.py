"""Make diffusers load diffusers-city classes through its generic entry points.

diffusers 0.42 resolves what ``model_index.json`` names in three places, none of which
knows a plugin package:

* a pipeline's ``_class_name`` is looked up on the ``diffusers`` module itself;
* a component ``[library, class]`` is imported from ``library`` and its load method is
  found through ``LOADABLE_CLASSES[library]``; ``DiffusionPipeline.download`` (repo ids)
  rejects a library missing from that table;
* ``save_pretrained`` records a component as ``[top-level package, class]`` only when the
  package is in ``LOADABLE_CLASSES``, else as its full module path.

``install()`` adds ``"diffusers_city"`` to ``LOADABLE_CLASSES`` (with diffusers' own base
classes, re-exported by ``diffusers_city``) and makes ``save_pretrained`` record every
registered class as ``["diffusers_city", name]`` wherever it is defined. ``register(cls)``
exports a class on ``diffusers_city`` and, for a pipeline, on ``diffusers``; ``register_alias``
keeps a class loadable under an earlier name.

The registry of systems (:class:`System`, :func:`systems`) lives in ``_systems`` (importable
without diffusers, for the CLI) and is re-exported here.
"""

from __future__ import annotations

import importlib
import sys
from typing import TypeVar

import diffusers
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.pipelines import pipeline_loading_utils, pipeline_utils

from ._systems import LIBRARY, System, family_packages, systems  # noqa: F401 (System, systems: re-exported)
from .utils.loading import check_weights_on_load
from .utils.storage import load_into_own_storage

_LOADABLE_BASES = ("ModelMixin", "SchedulerMixin", "DiffusionPipeline")

T = TypeVar("T", bound=type)

# Registered classes by name: the name is what model_index.json stores, so it must be unique.
_registry: dict[str, type] = {}
# Earlier class names still loadable from saved pipelines: old name -> current class.
_aliases: dict[str, type] = {}
_original_fetch = pipeline_loading_utils._fetch_class_library_tuple


def _fetch_class_library_tuple(module) -> tuple[str, str]:
    """diffusers' ``(library, class name)`` of a component, with registered classes in ``diffusers_city``."""
    library, class_name = _original_fetch(module)
    registered = _registry.get(class_name)
    if registered is not None and library in (registered.__module__, registered.__module__.split(".")[0]):
        return LIBRARY, class_name
    return library, class_name


def install() -> None:
    """Hook diffusers_city into diffusers' loading tables (idempotent)."""
    methods = ["save_pretrained", "from_pretrained"]
    # LOADABLE_CLASSES is one dict shared by pipeline_utils and pipeline_loading_utils: mutate it in place.
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(LIBRARY, {name: methods for name in _LOADABLE_BASES})
    for owner in (pipeline_loading_utils, pipeline_utils):
        if owner._fetch_class_library_tuple is not _fetch_class_library_tuple:
            owner._fetch_class_library_tuple = _fetch_class_library_tuple
    # Modular pipelines bind the function at import; patch them too if they are loaded.
    modular = sys.modules.get("diffusers.modular_pipelines.modular_pipeline")
    if modular is not None and hasattr(modular, "_fetch_class_library_tuple"):
        modular._fetch_class_library_tuple = _fetch_class_library_tuple


def _set_unique(namespace, name: str, cls: type, where: str) -> None:
    existing = getattr(namespace, name, None)
    if existing is not None and existing is not cls:
        raise ValueError(f"cannot register {cls.__module__}.{name}: {where} already has a different {name!r}")
    setattr(namespace, name, cls)


def register(cls: T) -> T:
    """Register a pipeline or component class so diffusers saves and loads it as ``["diffusers_city", name]``.

    ``cls`` must subclass ``DiffusionPipeline``, ``ModelMixin`` or ``SchedulerMixin``. It becomes
    an attribute of ``diffusers_city``; a pipeline also of ``diffusers``, where
    ``DiffusionPipeline.from_pretrained`` looks pipeline classes up. Registering the same class
    again is a no-op; another class with the same name is a ``ValueError``. Usable as a decorator.
    A model class's ``from_pretrained`` copies the loaded CPU weights out of the checkpoint's
    memory map (``utils.storage.load_into_own_storage``); a model's or pipeline's refuses
    non-finite weights and weights missing from the checkpoint (``utils.loading.check_weights_on_load``).
    """
    if not isinstance(cls, type) or not issubclass(cls, (DiffusionPipeline, ModelMixin, SchedulerMixin)):
        raise ValueError(f"register expects a DiffusionPipeline, ModelMixin or SchedulerMixin subclass, got {cls!r}")
    name = cls.__name__
    if _registry.get(name, cls) is not cls:
        raise ValueError(f"cannot register {cls.__module__}.{name}: {_registry[name].__module__}.{name} is registered")
    install()
    package = sys.modules[LIBRARY]
    _set_unique(package, name, cls, LIBRARY)
    if issubclass(cls, DiffusionPipeline):
        _set_unique(diffusers, name, cls, "diffusers")
    if issubclass(cls, ModelMixin):
        load_into_own_storage(cls)  # loaded CPU weights in aligned memory of their own: same kernels, same bits
    if issubclass(cls, (ModelMixin, DiffusionPipeline)):
        check_weights_on_load(cls)  # NaN / inf or missing (meta) weights refused, naming the component and tensor
    _registry[name] = cls
    return cls


def register_exports(names: list[str]) -> None:
    """Register every pipeline/model/scheduler class among ``diffusers_city``'s attributes ``names``."""
    package = sys.modules[LIBRARY]
    for name in names:
        obj = getattr(package, name)
        if isinstance(obj, type) and issubclass(obj, (DiffusionPipeline, ModelMixin, SchedulerMixin)):
            register(obj)


def registered() -> dict[str, type]:
    """Registered classes by name (a copy)."""
    return dict(_registry)


def register_alias(old_name: str, cls: type) -> None:
    """Make ``diffusers_city.<old_name>`` resolve to the registered ``cls``, so pipelines saved
    when ``cls`` had that name still load (``save_pretrained`` records the current name)."""
    if _registry.get(cls.__name__) is not cls:
        raise ValueError(f"register {cls.__name__} before aliasing {old_name!r} to it")
    if _registry.get(old_name) is not None or _aliases.get(old_name, cls) is not cls:
        raise ValueError(f"cannot alias {old_name!r} to {cls.__name__}: the name is taken")
    _set_unique(sys.modules[LIBRARY], old_name, cls, LIBRARY)
    _aliases[old_name] = cls


def aliases() -> dict[str, type]:
    """Earlier class names and the classes they load as (a copy)."""
    return dict(_aliases)


def export_families(namespace: dict, package: str) -> list[str]:
    """Put every name of the ``__all__`` of each subpackage of ``package`` into ``namespace`` (a
    package's ``globals()``); returns those names (the package's ``__all__``)."""
    names: list[str] = []
    for name in family_packages(package):
        module = importlib.import_module(name)
        namespace.update({k: getattr(module, k) for k in module.__all__})
        names += list(module.__all__)
    return names


def register_legacy_names(package: str) -> None:
    """``register_alias`` every ``LEGACY_NAMES`` entry (old name -> class) of ``package``'s subpackages."""
    for name in family_packages(package):
        for old_name, cls in getattr(importlib.import_module(name), "LEGACY_NAMES", {}).items():
            register_alias(old_name, cls)
