"""GaussianCity pipeline: BEV layouts -> 3D Gaussians -> rendered frames."""

from .pipeline_gaussiancity import GaussianCityPipeline, GaussianCityPipelineOutput

__all__ = ["GaussianCityPipeline", "GaussianCityPipelineOutput"]
