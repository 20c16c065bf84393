"""CityLayout pipelines: a BEV city layout (classes + heights) of any size from nothing or from a
partial map, and the layout chained into GaussianCity."""

from ..._systems import System, lazy_exports

SYSTEM = System(
    name="citylayout",
    pipeline="CityLayoutPipeline",
    description="nothing or a partial map -> a BEV city layout of any size (CityDreamer's layout generator)",
)

__all__ = [
    "CityLayoutGaussianCityPipeline",
    "CityLayoutGaussianCityPipelineOutput",
    "CityLayoutPipeline",
    "CityLayoutPipelineOutput",
]
# imported on first use, so that the CLI lists the systems without importing a pipeline
__getattr__ = lazy_exports(
    globals(),
    {
        "CityLayoutPipeline": "pipeline_citylayout",
        "CityLayoutGaussianCityPipeline": "pipeline_citylayout_gaussiancity",
        "CityLayoutPipelineOutput": "pipeline_output",
        "CityLayoutGaussianCityPipelineOutput": "pipeline_output",
    },
)
