"""Child process of tests/test_fuzz_readers.py: reads inputs with the package's readers under a
memory limit and reports each outcome, so a decoder abort or an allocation blow-up kills this
process (seen by the parent as a crash on that one input), never the test run.

Protocol: ``ready`` on stdout once it listens; then one JSON request per stdin line,
``{"kind": ..., "path": ..., "mpp": ...}``, and one JSON line back per request:
``{"outcome": "ok"}`` or ``{"outcome": "error", "types": [the error's class and its bases],
"message": ...}``. The limit, ``RLIMIT_AS`` = the address space after the imports + ``argv[1]``
MiB, is set once the imports are done.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
import warnings

from diffusers.utils import logging as diffusers_logging
from PIL import Image

from diffusers_city import GaussianCityPipeline
from diffusers_city.data import CityScene
from diffusers_city.data.readers import read_aerial_image, read_height_input, read_height_map, read_point_cloud, read_semantic_map

READERS = {
    "point_cloud": lambda path, mpp: read_point_cloud(path),
    "height_map": lambda path, mpp: read_height_map(path, meters_per_pixel=mpp),
    "height_input": read_height_input,
    "semantic": lambda path, mpp: read_semantic_map(path, {i: i % 8 for i in range(256)}),
    "aerial": lambda path, mpp: read_aerial_image(path),
    "scene": lambda path, mpp: CityScene.load(path),
    "pipeline": lambda path, mpp: GaussianCityPipeline.from_pretrained(path),
    # what the harness must catch (its own tests): a native abort and an allocation past the limit
    "abort": lambda path, mpp: os.abort(),
    "allocate": lambda path, mpp: bytearray(8 * 2**30),
}


def _address_space() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def main() -> None:
    limit = _address_space() + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    # The readers' decompression-bomb guard (PIL's, applied to GeoTIFFs too) scaled to the memory
    # limit: a small file may declare 2 x MAX_IMAGE_PIXELS pixels, decoded in float64.
    Image.MAX_IMAGE_PIXELS = 2**22
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            READERS[request["kind"]](request["path"], request.get("mpp"))
            reply = {"outcome": "ok"}
        except Exception as err:  # reported to the parent, which decides what is acceptable
            frame = traceback.extract_tb(err.__traceback__)[-1]
            reply = {
                "outcome": "error",
                "types": [c.__name__ for c in type(err).__mro__],
                "message": f"{str(err)[:500]} (raised at {frame.filename}:{frame.lineno})",
            }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
