"""diffusers-city: generative 3D cities as Hugging Face diffusers pipelines.

Importing the package registers its pipelines and component classes with diffusers, so
``DiffusionPipeline.from_pretrained(path_or_repo_id)`` resolves them and ``save_pretrained``
records components as ``["diffusers_city", "ClassName"]``. Classes defined elsewhere join
through ``diffusers_city.register(cls)``.
"""

# diffusers looks components' base classes up on the library module: keep these names here.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin

from ._registration import install as _install
from ._registration import register, register_alias
from ._registration import register_exports as _register_exports
from ._registration import register_legacy_names as _register_legacy_names
from ._version import __version__ as __version__

_install()

from .models import *  # noqa: E402,F401,F403
from .models import __all__ as _models_all  # noqa: E402
from .pipelines import *  # noqa: E402,F401,F403
from .pipelines import __all__ as _pipelines_all  # noqa: E402

_register_exports([*_models_all, *_pipelines_all])
_register_legacy_names(f"{__name__}.models")

__all__ = [
    "register",
    "register_alias",
    "ConfigMixin",
    "DiffusionPipeline",
    "ModelMixin",
    "SchedulerMixin",
    *_models_all,
    *_pipelines_all,
]
