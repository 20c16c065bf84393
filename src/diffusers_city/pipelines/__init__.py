"""``DiffusionPipeline`` subclasses, one folder per family (each declares its ``SYSTEM``), and the
code they share in ``pipeline_utils``. Each family's ``__all__`` is re-exported."""

from .._registration import export_families

__all__ = export_families(globals(), __name__)
