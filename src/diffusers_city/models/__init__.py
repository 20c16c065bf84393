"""Model components (``ModelMixin, ConfigMixin``), one per file, one folder per family, and the
parts every family shares in ``models.shared``. Each subpackage's ``__all__`` is re-exported."""

from .._registration import export_families

__all__ = export_families(globals(), __name__)
