"""Golden hashes of `procedural_city`: speed work on the generator must keep every array bit-identical.

The hashes (first 16 hex digits of the SHA-256 of each array's bytes, with dtype and shape) were
recorded from the generator before its optimisation. A deliberate change of the generated cities
must re-record them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from diffusers_city.data import procedural_city

CONFIGS = [
    dict(seed=0, size_m=128.0, meters_per_pixel=1.0, points_per_m2=4.0),
    dict(seed=12345, size_m=128.0, meters_per_pixel=0.5, points_per_m2=2.0, river_probability=1.0, height_scale=0.75),
    dict(seed=3, size_m=(160.0, 96.0), meters_per_pixel=1.0, points_per_m2=1.0, image_scale=2, sun_elevation_deg=None),
    # the Sat2City `small` training scene (presets/small.json "training.data"), with and without a river
    dict(seed=7, size_m=600.0, meters_per_pixel=1.171875, points_per_m2=1.0, height_scale=0.75),
    dict(seed=-5, size_m=600.0, meters_per_pixel=1.171875, points_per_m2=1.0, river_probability=1.0, height_scale=0.75),
]
GOLDEN = [
    {
        "height": ("747912281723d316", "float32", (128, 128)),
        "ground": ("5b27d40adff91eb4", "float32", (128, 128)),
        "semantic": ("21108ac77cca042e", "uint8", (128, 128)),
        "instance": ("96a76b43a5c5830d", "int32", (128, 128)),
        "image": ("5441249fff8b6f24", "float32", (128, 128, 3)),
        "points": ("b2df5cfcd7542fcc", "float32", (113154, 3)),
        "colors": ("3522dc90232175c5", "float32", (113154, 3)),
        "normals": ("6b004306dd35a1ac", "float32", (113154, 3)),
        "point_classes": ("10b91a4aab0e7170", "uint8", (113154,)),
    },
    {
        "height": ("410b2353f28169eb", "float32", (256, 256)),
        "ground": ("02a6454dc8176205", "float32", (256, 256)),
        "semantic": ("23b33aa0d396830d", "uint8", (256, 256)),
        "instance": ("bce97eb209891a8d", "int32", (256, 256)),
        "image": ("44e8d9603e70ea22", "float32", (256, 256, 3)),
        "points": ("8027f9165bd58ba2", "float32", (66915, 3)),
        "colors": ("187f03ff4ccfea68", "float32", (66915, 3)),
        "normals": ("3eaf83bf32680fc5", "float32", (66915, 3)),
        "point_classes": ("7b9c6d36949e866e", "uint8", (66915,)),
    },
    {
        "height": ("bee6f51f7b8351c0", "float32", (96, 160)),
        "ground": ("55669f8c4858ec6d", "float32", (96, 160)),
        "semantic": ("3f7f14e1da191413", "uint8", (96, 160)),
        "instance": ("27c26b7e9c3e12dc", "int32", (96, 160)),
        "image": ("78f702f64db8ae88", "float32", (192, 320, 3)),
        "points": ("86e82a31818e5765", "float32", (32263, 3)),
        "colors": ("bbf2407a21865f6a", "float32", (32263, 3)),
        "normals": ("e94b07b4d68f5ad8", "float32", (32263, 3)),
        "point_classes": ("5b0fee8c4f6b9afb", "uint8", (32263,)),
    },
    {
        "height": ("98324474d917cd4c", "float32", (512, 512)),
        "ground": ("807212d846c11040", "float32", (512, 512)),
        "semantic": ("3b8323db91ec6d73", "uint8", (512, 512)),
        "instance": ("047298cedc6e5cd2", "int32", (512, 512)),
        "image": ("bf2f1efaaa92a8ba", "float32", (512, 512, 3)),
        "points": ("b574f57989f66913", "float32", (865288, 3)),
        "colors": ("fd27f5bab37277bb", "float32", (865288, 3)),
        "normals": ("d13565fdf267056e", "float32", (865288, 3)),
        "point_classes": ("fd0d730f7dbbd050", "uint8", (865288,)),
    },
    {
        "height": ("38311aa70ecd7ffd", "float32", (512, 512)),
        "ground": ("361a84206e9be8f5", "float32", (512, 512)),
        "semantic": ("27d607a44e0d7b51", "uint8", (512, 512)),
        "instance": ("be44dc72c606cf88", "int32", (512, 512)),
        "image": ("4f2af0882dba50cd", "float32", (512, 512, 3)),
        "points": ("d3dbd0da1ef94abb", "float32", (738490, 3)),
        "colors": ("9fcc038d726dfdd9", "float32", (738490, 3)),
        "normals": ("80d00e9bb3b6eddf", "float32", (738490, 3)),
        "point_classes": ("13b0432b9b085e1c", "uint8", (738490,)),
    },
]


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_procedural_city_matches_golden_hashes(index: int) -> None:
    cfg = dict(CONFIGS[index])
    scene = procedural_city(cfg.pop("seed"), **cfg)
    for name, (digest, dtype, shape) in GOLDEN[index].items():
        arr = np.ascontiguousarray(getattr(scene, name))
        got = (hashlib.sha256(arr.tobytes()).hexdigest()[:16], str(arr.dtype), arr.shape)
        assert got == (digest, dtype, shape), f"config {index} field {name}: {got} != {(digest, dtype, shape)}"
