"""`import diffusers_city` makes diffusers' generic entry points save and load our classes."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines import pipeline_loading_utils

import diffusers_city
from diffusers_city import register
from diffusers_city._registration import registered


@register
class RegistrationTestDenoiser(ModelMixin, ConfigMixin):
    """Two-layer MLP on [B, C] samples: a stand-in for a real denoiser."""

    @register_to_config
    def __init__(self, channels: int = 4, hidden: int = 8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(channels, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, channels))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.net(sample)


@register
class RegistrationTestPipeline(DiffusionPipeline):
    def __init__(self, denoiser: RegistrationTestDenoiser, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, num_inference_steps: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
        sample = torch.randn(2, self.denoiser.config.channels, generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            sample = self.scheduler.step(self.denoiser(sample, t), t, sample).prev_sample
        return sample


def make_pipeline() -> RegistrationTestPipeline:
    torch.manual_seed(0)
    scheduler = DDIMScheduler(num_train_timesteps=50, clip_sample=False)
    return RegistrationTestPipeline(RegistrationTestDenoiser(), scheduler)


def public_config(obj: ConfigMixin) -> dict:
    return {k: v for k, v in obj.config.items() if not k.startswith("_")}


def assert_same_pipeline(loaded: DiffusionPipeline, original: RegistrationTestPipeline) -> None:
    assert type(loaded) is RegistrationTestPipeline
    assert type(loaded.denoiser) is RegistrationTestDenoiser
    assert type(loaded.scheduler) is DDIMScheduler
    reference = original.denoiser.state_dict()
    state = loaded.denoiser.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert public_config(loaded.scheduler) == public_config(original.scheduler)
    a = loaded(generator=torch.Generator().manual_seed(1))
    b = original(generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_save_records_diffusers_city_library(tmp_path):
    make_pipeline().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "RegistrationTestPipeline"
    assert index["denoiser"] == ["diffusers_city", "RegistrationTestDenoiser"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (tmp_path / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()


def test_round_trip_by_path_is_bit_exact(tmp_path):
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path)
    assert_same_pipeline(DiffusionPipeline.from_pretrained(tmp_path), pipe)


def test_round_trip_by_repo_id_through_offline_hub(offline_hub):
    pipe = make_pipeline()
    pipe.push_to_hub("city-org/registration-test")
    files = offline_hub.files("city-org/registration-test")
    assert "model_index.json" in files
    assert "denoiser/diffusion_pytorch_model.safetensors" in files
    assert_same_pipeline(DiffusionPipeline.from_pretrained("city-org/registration-test"), pipe)


def test_unknown_repo_fails_without_network(offline_hub):
    with pytest.raises(OSError):
        DiffusionPipeline.from_pretrained("city-org/does-not-exist")


def test_register_exports_on_the_right_modules():
    assert diffusers_city.RegistrationTestDenoiser is RegistrationTestDenoiser
    assert diffusers_city.RegistrationTestPipeline is RegistrationTestPipeline
    assert diffusers.RegistrationTestPipeline is RegistrationTestPipeline
    assert "RegistrationTestDenoiser" not in vars(diffusers)
    assert "diffusers_city" in pipeline_loading_utils.LOADABLE_CLASSES
    assert registered()["RegistrationTestDenoiser"] is RegistrationTestDenoiser


def test_register_is_idempotent_and_rejects_clashes():
    assert register(RegistrationTestDenoiser) is RegistrationTestDenoiser
    diffusers_city._registration.install()
    assert registered()["RegistrationTestDenoiser"] is RegistrationTestDenoiser

    clash = type("RegistrationTestDenoiser", (ModelMixin, ConfigMixin), {})
    with pytest.raises(ValueError, match="already|registered"):
        register(clash)
    assert diffusers_city.RegistrationTestDenoiser is RegistrationTestDenoiser

    shadow = type("DDIMPipeline", (DiffusionPipeline,), {})
    with pytest.raises(ValueError, match="diffusers already has"):
        register(shadow)
    assert "DDIMPipeline" not in registered()

    with pytest.raises(ValueError, match="DiffusionPipeline, ModelMixin or SchedulerMixin"):
        register(torch.nn.Linear)


def test_package_classes_are_all_registered():
    assert {"register", "ModelMixin", "SchedulerMixin", "DiffusionPipeline"} <= set(diffusers_city.__all__)
    loadable = (DiffusionPipeline, ModelMixin, diffusers.SchedulerMixin)
    for name in diffusers_city.__all__:
        obj = getattr(diffusers_city, name)
        if isinstance(obj, type) and issubclass(obj, loadable) and obj.__module__.startswith("diffusers_city."):
            assert registered().get(name) is obj, name


@register
class RegistrationTestOddSizes(ModelMixin, ConfigMixin):
    """Layers of odd byte sizes, so that in a safetensors file most tensors start off 16-byte boundaries."""

    @register_to_config
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 5)
        self.b = torch.nn.Linear(5, 35)
        self.c = torch.nn.Linear(35, 33)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 33))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x))))) * self.scale


def test_loaded_weights_own_aligned_memory_and_compute_the_same_bits(tmp_path):
    """diffusers hands the model safetensors' views into the file's memory map, at the file's byte
    offsets; MKL's one-row product (sgemv) sums in another order for a weight that is not
    16-byte aligned, so reloaded GaussianCity pipelines rendered other images. ``from_pretrained``
    of a registered model copies its CPU weights into torch-allocated (64-byte aligned) memory:
    the layout of the model that was saved, so a one-row forward is bit-exact again."""
    torch.manual_seed(0)
    model = RegistrationTestOddSizes().eval()
    model.save_pretrained(tmp_path / "odd")
    loaded, info = RegistrationTestOddSizes.from_pretrained(tmp_path / "odd", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert len(tensors) == 7
    assert {k: t.data_ptr() % 64 for k, t in tensors.items()} == dict.fromkeys(tensors, 0)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the wrapped from_pretrained (own storage, then the weight checks) is inherited by subclasses and not wrapped twice
    assert register(RegistrationTestOddSizes) is RegistrationTestOddSizes
    assert RegistrationTestOddSizes.from_pretrained.__func__.__wrapped__.__wrapped__ is ModelMixin.from_pretrained.__func__
