"""``DiffusionPipeline`` subclasses, one folder per system."""

from .gaussiancity import *  # noqa: F401,F403
from .gaussiancity import __all__ as _gaussiancity_all
from .sat2city import *  # noqa: F401,F403
from .sat2city import __all__ as _sat2city_all

__all__ = [*_sat2city_all, *_gaussiancity_all]
