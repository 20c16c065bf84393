"""diffusers-city: generative 3D cities as Hugging Face diffusers pipelines.

Importing the package registers its pipelines and component classes with diffusers, so
``DiffusionPipeline.from_pretrained(path_or_repo_id)`` resolves them.
"""

__version__ = "0.1.0"

from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from .models import *  # noqa: F401,F403
from .models import __all__ as _models_all
from .pipelines import *  # noqa: F401,F403
from .pipelines import __all__ as _pipelines_all

__all__ = [*_models_all, *_pipelines_all]
