"""GaussianCity pipeline: BEV layouts -> 3D Gaussians -> rendered frames."""

from ..._systems import System, lazy_exports

SYSTEM = System(
    name="gaussiancity",
    pipeline="GaussianCityPipeline",
    description="BEV layout -> 3D Gaussian city with the GaussianCity pipeline",
)

__all__ = ["GaussianCityPipeline", "GaussianCityPipelineOutput"]
# imported on first use, so that the CLI lists the systems without importing a pipeline
__getattr__ = lazy_exports(
    globals(), {"GaussianCityPipeline": "pipeline_gaussiancity", "GaussianCityPipelineOutput": "pipeline_output"}
)
