"""The contract every diffusers-city pipeline meets, in the spirit of diffusers' ``PipelineTesterMixin``.

A pipeline's test module subclasses :class:`PipelineContract` as ``Test<Name>PipelineContract`` and
fills in the hooks below; pytest then runs every ``test_*`` here against it:

- save / load round trip: every weight bit-exact, the same output for the same seed;
- ``from_pretrained`` by local path and by Hub repo id (through the offline Hub stand-in);
- seeded determinism (same seed, same output; another seed, another output);
- the callback contract (``callback_on_step_end`` gets exactly the tensors it asks for, may replace
  them, and unknown names are refused);
- every ``output_type`` it documents, and a refusal of the others;
- ``enable_model_cpu_offload`` on CUDA;
- bad input refused with a ``ValueError`` before any work (the ``work_component``'s forward is
  never reached).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_city.pipelines.pipeline_utils import OUTPUT_TYPES


class PipelineContract:
    """Hooks to fill in (class attributes and methods)."""

    pipeline_class: type
    output_types: tuple[str, ...]  # every output_type the pipeline supports
    callback_tensor_inputs: tuple[str, ...]  # what ``_callback_tensor_inputs`` must be
    work_component: str  # a component whose forward runs once work has started
    bad_inputs: tuple[tuple[dict, str], ...] = ()  # (call arguments replacing the defaults, error pattern)
    # Largest difference of outputs after a save / load round trip (0: bit-exact).
    reload_atol: float = 0.0

    @classmethod
    def make_pipeline(cls) -> DiffusionPipeline:
        """A small (tiny preset) pipeline whose outputs are non-empty and depend on the seed (built
        once per class: the ``contract_pipe`` fixture of ``conftest.py``)."""
        raise NotImplementedError

    def call_arguments(self, seed: int = 0) -> dict:
        """Arguments of a fast call, ``generator`` seeded with ``seed``."""
        raise NotImplementedError

    def main_output(self, output) -> np.ndarray:
        """The output's main array (what determinism and round trips compare)."""
        raise NotImplementedError

    def check_output(self, output, output_type: str) -> None:
        """Assert that ``output`` is what ``output_type`` promises."""
        raise NotImplementedError

    # -- shared machinery ---------------------------------------------------------------------
    def run(self, pipe, seed: int = 0, **changes):
        return pipe(**{**self.call_arguments(seed), **changes})

    def assert_same_output(self, a, b, atol: float = 0.0) -> None:
        x, y = self.main_output(a), self.main_output(b)
        assert x.shape == y.shape
        if atol == 0.0:
            assert np.array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, atol=atol, rtol=0)

    # -- the contract -------------------------------------------------------------------------
    def test_output_types_are_the_shared_vocabulary(self, contract_pipe):
        assert set(self.output_types) <= set(OUTPUT_TYPES)
        assert list(contract_pipe._callback_tensor_inputs) == list(self.callback_tensor_inputs)
        assert callable(getattr(contract_pipe, "check_inputs", None))
        assert type(contract_pipe).__call__.__module__ == type(contract_pipe).__module__
        output_class = type(self.run(contract_pipe, output_type=self.output_types[0]))
        assert output_class.__module__.endswith(".pipeline_output"), "the output dataclass lives in pipeline_output.py"

    def test_save_load_round_trip(self, contract_pipe, tmp_path):
        contract_pipe.save_pretrained(tmp_path / "saved")
        loaded = self.pipeline_class.from_pretrained(tmp_path / "saved")
        loaded.set_progress_bar_config(disable=True)
        for name, component in contract_pipe.components.items():
            if isinstance(component, torch.nn.Module):
                theirs = getattr(loaded, name).state_dict()
                for key, value in component.state_dict().items():
                    assert torch.equal(value, theirs[key]), f"{name}.{key}"
        self.assert_same_output(self.run(loaded), self.run(contract_pipe), self.reload_atol)

    def test_from_pretrained_by_path_and_hub_id(self, contract_pipe, tmp_path, offline_hub):
        contract_pipe.save_pretrained(tmp_path / "saved")
        assert type(DiffusionPipeline.from_pretrained(tmp_path / "saved")) is self.pipeline_class
        repo = f"org/{self.pipeline_class.__name__.lower()}-contract"
        contract_pipe.push_to_hub(repo)
        assert "model_index.json" in offline_hub.files(repo)
        loaded = DiffusionPipeline.from_pretrained(repo)
        assert type(loaded) is self.pipeline_class
        loaded.set_progress_bar_config(disable=True)
        self.assert_same_output(self.run(loaded), self.run(contract_pipe), self.reload_atol)

    def test_seeded_determinism(self, contract_pipe):
        a, b, c = self.run(contract_pipe, seed=0), self.run(contract_pipe, seed=0), self.run(contract_pipe, seed=1)
        self.assert_same_output(a, b)
        assert not np.array_equal(self.main_output(a), self.main_output(c))

    def test_callback_contract(self, contract_pipe):
        for names in ([], list(self.callback_tensor_inputs)):
            seen = []

            def record(p, i, t, kwargs, seen=seen):
                assert p is contract_pipe
                seen.append(sorted(kwargs))
                return kwargs

            same = self.run(contract_pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=names)
            assert seen and all(keys == sorted(names) for keys in seen)
            self.assert_same_output(same, self.run(contract_pipe))

        def zero(p, i, t, kwargs):
            return {k: torch.zeros_like(v) for k, v in kwargs.items()}

        edited = self.run(contract_pipe, callback_on_step_end=zero)
        assert not np.array_equal(self.main_output(edited), self.main_output(self.run(contract_pipe)))
        with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
            self.run(contract_pipe, callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["not_a_tensor"])

    def test_every_output_type(self, contract_pipe):
        for output_type in self.output_types:
            self.check_output(self.run(contract_pipe, output_type=output_type), output_type)
        for output_type in sorted(set(OUTPUT_TYPES) - set(self.output_types)):
            with pytest.raises(ValueError, match="output_type"):
                self.run(contract_pipe, output_type=output_type)

    def test_tuple_output(self, contract_pipe):
        out = self.run(contract_pipe, return_dict=False)
        assert isinstance(out, tuple) and np.array_equal(np.asarray(out[0]), np.asarray(self.run(contract_pipe)[0]))

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload moves components to a CUDA device")
    def test_model_cpu_offload(self, contract_pipe):
        reference = self.run(contract_pipe.to("cuda"))
        contract_pipe.to("cpu")
        contract_pipe.enable_model_cpu_offload()
        try:
            self.assert_same_output(self.run(contract_pipe), reference, atol=1e-4)
        finally:
            contract_pipe.remove_all_hooks()
            contract_pipe.to("cpu")

    def test_bad_input_is_refused_before_any_work(self, contract_pipe, monkeypatch):
        def no_work(*args, **kwargs):
            raise AssertionError("work started before the input was checked")

        monkeypatch.setattr(getattr(contract_pipe, self.work_component), "forward", no_work)
        for changes, match in self.bad_inputs:
            with pytest.raises(ValueError, match=match):
                self.run(contract_pipe, **changes)
