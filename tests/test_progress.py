"""Every pipeline's progress bars name their stage from their first line (no bare ``0%| | 0/50``)."""

import io
import re

import numpy as np
import pytest
import torch

from diffusers_city import EarthCrafterPipeline, GaussianCityPipeline, Sat2CityPipeline
from diffusers_city.data import procedural_city


def _bars(pipe, run) -> list[str]:
    """The progress-bar lines ``run(pipe)`` draws (each redraw one line)."""
    buffer = io.StringIO()
    pipe.set_progress_bar_config(file=buffer, disable=False)
    run(pipe)
    lines = buffer.getvalue().replace("\r", "\n").split("\n")
    return [line.strip() for line in lines if "%|" in line]


def _sat2city(pipe):
    hm = np.zeros((32, 32), np.uint8)
    hm[8:16, 8:20] = 200
    pipe(hm, num_inference_steps=2, generator=torch.Generator().manual_seed(0))


def _gaussiancity(pipe):
    scene = procedural_city(3, size_m=32.0, with_points=False, with_image=False)
    pipe(scene=scene, trajectory="orbit", num_frames=2, width=16, height=12, generator=torch.Generator().manual_seed(0))


def _earthcrafter(pipe):
    pipe(num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="points")


@pytest.mark.parametrize(
    ("pipeline_class", "run", "stages"),
    [
        (Sat2CityPipeline, _sat2city, {"dense"}),  # the untrained tiny model may stop after it
        (GaussianCityPipeline, _gaussiancity, {"frames"}),
        (EarthCrafterPipeline, _earthcrafter, None),
    ],
)
def test_every_bar_is_labelled_from_its_first_line(pipeline_class, run, stages):
    family = pipeline_class.__name__.removesuffix("Pipeline").lower()
    bars = _bars(pipeline_class.from_preset("tiny"), run)
    assert bars
    unlabelled = [line for line in bars if not re.match(rf"{family} [a-z ]+: ", line)]
    assert unlabelled == [], unlabelled[:3]
    if stages is not None:
        assert stages <= {re.match(rf"{family} ([a-z ]+): ", line).group(1) for line in bars}
