"""Sat2City pipeline: height map -> coloured 3D city by cascaded latent diffusion."""

from ..._systems import System, lazy_exports

SYSTEM = System(name="sat2city", pipeline="Sat2CityPipeline", description="height map -> 3D city with the Sat2City pipeline")

__all__ = ["Sat2CityPipeline", "Sat2CityPipelineOutput"]
# imported on first use, so that the CLI lists the systems without importing a pipeline
__getattr__ = lazy_exports(globals(), {"Sat2CityPipeline": "pipeline_sat2city", "Sat2CityPipelineOutput": "pipeline_output"})
