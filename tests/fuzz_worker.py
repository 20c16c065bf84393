"""Child process of tests/test_fuzz_readers.py: reads inputs with the package's readers under a
memory limit and reports each outcome, so a decoder abort or an allocation blow-up kills this
process (seen by the parent as a crash of that one input), never the test run.

Protocol: one JSON request per stdin line, ``{"kind": ..., "path": ..., "mpp": ...}``; one JSON
line back per request, ``{"outcome": "ok"}`` or ``{"outcome": "error", "types": [the error's class and
its bases], "message": ...}``.
The limit, ``RLIMIT_AS`` = the address space after the imports + ``argv[1]`` MiB, is set once
the imports are done. Started with ``ready`` printed on stdout once it listens.
"""

from __future__ import annotations

import json
import resource
import sys
import warnings

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffusers_city.data import CityScene
from diffusers_city.data.readers import read_aerial_image, read_height_input, read_height_map, read_point_cloud, read_semantic_map
from diffusers_city.utils.loading import check_loaded_model


class TinyNet(ModelMixin, ConfigMixin):
    """The smallest ModelMixin with a config-sized layer stack and a buffer, for loading fuzz.
    Validates its config like the package's models, so a mutated config fails as ValueError."""

    @register_to_config
    def __init__(self, width: int = 4, num_layers: int = 2):
        super().__init__()
        for key, value, top in (("width", width, 64), ("num_layers", num_layers, 8)):
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top):
                raise ValueError(f"{key} must be an integer in 1..{top}, got {value!r}")
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.register_buffer("scale", torch.ones(width))


def _read(kind: str, path: str, mpp: float | None) -> None:
    if kind == "point_cloud":
        read_point_cloud(path)
    elif kind == "height_map":
        read_height_map(path, meters_per_pixel=mpp)
    elif kind == "height_input":
        read_height_input(path, mpp)
    elif kind == "semantic":
        read_semantic_map(path, {i: i % 8 for i in range(256)})
    elif kind == "aerial":
        read_aerial_image(path)
    elif kind == "scene":
        CityScene.load(path)
    elif kind == "model":
        check_loaded_model(TinyNet.from_pretrained(path), "tiny")
    else:
        raise SystemExit(f"unknown kind {kind!r}")


def _address_space() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def main() -> None:
    limit = _address_space() + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            _read(request["kind"], request["path"], request.get("mpp"))
            reply = {"outcome": "ok"}
        except Exception as err:  # reported to the parent, which decides what is acceptable
            reply = {"outcome": "error", "types": [c.__name__ for c in type(err).__mro__], "message": str(err)[:500]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
