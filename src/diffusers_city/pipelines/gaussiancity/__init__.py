"""GaussianCity pipeline: BEV layouts -> 3D Gaussians -> rendered frames."""

from ..._registration import System
from .pipeline_gaussiancity import GaussianCityPipeline
from .pipeline_output import GaussianCityPipelineOutput

SYSTEM = System(
    name="gaussiancity",
    pipeline="GaussianCityPipeline",
    description="BEV layout -> 3D Gaussian city with the GaussianCity pipeline",
)

__all__ = ["GaussianCityPipeline", "GaussianCityPipelineOutput"]
