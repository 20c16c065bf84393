"""Sat2City pipeline: height map -> coloured 3D city by cascaded latent diffusion."""

from .pipeline_output import Sat2CityPipelineOutput
from .pipeline_sat2city import Sat2CityPipeline

__all__ = ["Sat2CityPipeline", "Sat2CityPipelineOutput"]
