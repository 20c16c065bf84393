"""Sat2City pipeline: height map -> coloured 3D city by cascaded latent diffusion."""

from ..._registration import System
from .pipeline_output import Sat2CityPipelineOutput
from .pipeline_sat2city import Sat2CityPipeline

SYSTEM = System(name="sat2city", pipeline="Sat2CityPipeline", description="height map -> 3D city with the Sat2City pipeline")

__all__ = ["Sat2CityPipeline", "Sat2CityPipelineOutput"]
