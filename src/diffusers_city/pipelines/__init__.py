"""``DiffusionPipeline`` subclasses, one folder per family (each declares its ``SYSTEM``), and the
code they share in ``pipeline_utils``. Each family's ``__all__`` is re-exported, imported on first
use (``import diffusers_city`` uses them all; the CLI lists the systems without them)."""

from .._systems import lazy_family_exports

__all__, __getattr__ = lazy_family_exports(globals())
