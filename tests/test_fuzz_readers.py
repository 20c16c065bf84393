"""Fuzzing every reader with random and mutated bytes (seeded hypothesis, no shrinking): PLY,
LAS, LAZ, PNG, TIFF, GeoTIFF, ``.npy``, ``CityScene.load`` and a pipeline folder's configs and
safetensors. Each input is read in a child process (`fuzz_worker.py`, one per test, restarted
after a crash) under a memory limit, so a decoder abort or an allocation blow-up fails the test
instead of killing the run. A reader may succeed or raise its documented error types
(``ValueError`` / ``FileNotFoundError``; diffusers' loading adds ``OSError``) naming the input;
anything else (a crash, ``MemoryError``, ``TypeError``, a timeout...) fails, naming the input.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

import diffusers_city
from diffusers_city import GaussianCityPipeline
from diffusers_city.data import procedural_city
from diffusers_city.export import write_point_ply

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the worker's memory limit is RLIMIT_AS and /proc")

WORKER = Path(__file__).with_name("fuzz_worker.py")
MEMORY_MIB = 1024  # above the worker's address space after its imports
TIMEOUT_S = 60  # per input, generous for a loaded machine: only a hang reaches it
READERS = frozenset({"ValueError", "FileNotFoundError"})
LOADING = READERS | {"OSError"}

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 30)),
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each failure is reported as drawn
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Worker:
    """A `fuzz_worker.py` child process, started on first use and again after a crash."""

    def __init__(self, log: Path):
        self.log, self.proc = log, None

    def start(self) -> None:
        src = str(Path(diffusers_city.__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        self.stderr = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(MEMORY_MIB)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        assert self._line() == "ready", f"fuzz worker did not start: {self.log.read_text()[-2000:]}"

    def _line(self) -> str | None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(TIMEOUT_S):
                self.proc.kill()
                self.timed_out = True
        line = self.proc.stdout.readline()
        return line.decode().strip() if line else None

    def read(self, kind: str, path: Path, mpp: float | None = None) -> dict:
        if self.proc is None:
            self.start()
        self.proc.stdin.write((json.dumps({"kind": kind, "path": str(path), "mpp": mpp}) + "\n").encode())
        self.proc.stdin.flush()
        line, self.timed_out = self._line(), False
        if line is None:
            code = self.proc.wait()
            self.stderr.close()
            self.proc = None
            return {
                "outcome": "crash",
                "code": code,
                "timed_out": self.timed_out,
                "stderr": self.log.read_text(errors="replace")[-1500:],
            }
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.stderr.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("fuzz") / "worker.log")
    yield w
    w.close()


def check(outcome: dict, accepted: frozenset, what: str, name: str) -> None:
    """Fail unless ``outcome`` is a success or an accepted error whose message names ``name``."""
    if outcome["outcome"] == "crash":
        hang = f", no answer in {TIMEOUT_S} s" if outcome["timed_out"] else ""
        pytest.fail(f"{what}: the reader killed its process (exit code {outcome['code']}{hang}): {outcome['stderr']}")
    if outcome["outcome"] == "error":
        kind = outcome["types"][0]
        assert accepted & set(outcome["types"]), f"{what}: undocumented {kind}: {outcome['message']}"
        assert name in outcome["message"], f"{what}: {kind} does not name {name}: {outcome['message']}"


# ---------------------------------------------------------------------------- mutations

EXTREMES = [0, 1, 0x7F, 0x80, 0xFF]


@st.composite
def mutated(draw, data: bytes) -> tuple[bytes, str]:
    """``data`` damaged as files get damaged (and as an attacker would), with a description."""
    op = draw(st.sampled_from(["bytes", "header", "tail", "integer", "truncate", "splice", "random"]))
    raw = bytearray(data)
    if op == "bytes":  # flipped bytes anywhere
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif op in ("header", "tail"):  # extreme bytes where the headers are (LAZ: its chunk table at the end)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, min(len(raw), 400) - 1))
            raw[at if op == "header" else len(raw) - 1 - at] = draw(st.sampled_from(EXTREMES))
    elif op == "integer":  # a count, size or offset field made huge, zero or negative
        at = draw(st.integers(0, max(min(len(raw), 400) - 8, 0)))
        width = draw(st.sampled_from([2, 4, 8]))
        value = draw(st.sampled_from([0, 1, 2**15, 2**31 - 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1]))
        raw[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    elif op == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif op == "splice":  # a chunk removed or repeated
        a = draw(st.integers(0, len(raw) - 1))
        b = draw(st.integers(a, min(len(raw), a + 256)))
        raw = raw[:a] + raw[b:] if draw(st.booleans()) else raw[:b] + raw[a:]
    else:  # the file's magic number, then noise
        keep = draw(st.sampled_from([0, 4, 16, 64]))
        raw = raw[:keep] + bytearray(draw(st.binary(max_size=2048)))
    return bytes(raw), op


# ---------------------------------------------------------------------------- seed files


def _las(path: Path) -> Path:
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = [0.01] * 3, [350000.0, 5600000.0, 0.0]
    las = laspy.LasData(header)
    rng = np.random.default_rng(0)
    las.x, las.y, las.z = 350000 + rng.random(80) * 40, 5600000 + rng.random(80) * 40, rng.random(80) * 10
    las.classification = rng.choice([2, 5, 6], 80).astype(np.uint8)
    las.red = las.green = las.blue = rng.integers(0, 65535, 80)
    las.write(str(path))
    return path


def _geotiff(path: Path) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).random((16, 16)).astype(np.float32) * 30
    profile = dict(driver="GTiff", width=16, height=16, count=1, dtype="float32", crs="EPSG:32633", nodata=-9999.0)
    with rasterio.open(path, "w", transform=from_origin(350000.0, 5600000.0, 2.0, 2.0), **profile) as dst:
        dst.write(data, 1)
    return path


def _gray(path: Path, dtype=np.uint8, mode=None) -> Path:
    data = (np.random.default_rng(0).random((16, 16)) * 200).astype(dtype)
    Image.fromarray(data, mode).save(path)
    return path


SEEDS = {  # name: (writer, reader kind, meters per pixel)
    "ply": (lambda p: write_point_ply(p, *np.random.default_rng(0).random((2, 60, 3))), "point_cloud", None),
    "las": (_las, "point_cloud", None),
    "laz": (_las, "point_cloud", None),
    "png": (_gray, "height_input", 1.0),
    "16bit.png": (lambda p: _gray(p, np.uint16), "height_map", 1.0),
    "rgb.png": (
        lambda p: Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(p),
        "aerial",
        None,
    ),
    "semantic.png": (lambda p: _gray(p), "semantic", None),
    "tif": (lambda p: _gray(p, np.float32), "height_map", 1.0),
    "geo.tif": (_geotiff, "height_input", None),
    "npy": (lambda p: np.save(p, np.random.default_rng(0).random((8, 8))), "height_map", 1.0),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    found = {}
    for name, (write, _, _) in SEEDS.items():
        path = folder / f"seed.{name}"
        write(path)
        found[name] = path.read_bytes()
    return found


@pytest.mark.parametrize("name", list(SEEDS))
def test_mutated_files(worker, seeds, tmp_path, name):
    _, kind, mpp = SEEDS[name]
    assert worker.read(kind, _write(tmp_path, name, seeds[name]), mpp) == {"outcome": "ok"}, f"the {name} seed must read"

    @FUZZ
    @given(mutation=mutated(seeds[name]))
    def fuzz(mutation):
        raw, op = mutation
        path = _write(tmp_path, name, raw)
        check(worker.read(kind, path, mpp), READERS, f"{name} ({op}, {len(raw)} bytes)", path.name)

    fuzz()


def _write(folder: Path, name: str, raw: bytes) -> Path:
    path = folder / f"input.{name}"
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("kind", sorted({kind for _, kind, _ in SEEDS.values()}))
@FUZZ
@given(raw=st.binary(max_size=4096), suffix=st.sampled_from([".ply", ".las", ".laz", ".png", ".tif", ".npy", ".jpg"]))
def test_random_bytes(worker, tmp_path, kind, raw, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(raw)
    check(worker.read(kind, path, 1.0), READERS, f"{kind} of {len(raw)} random bytes as {suffix}", path.name)


# ---------------------------------------------------------------------------- folders


def _folder_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _json_edit(raw: bytes, draw) -> tuple[bytes, str]:
    """A valid JSON object with one key's value replaced by an odd value (the keys of the file)."""
    obj = json.loads(raw)
    key = draw(st.sampled_from(sorted(obj)))
    odd = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(),
        st.text(max_size=8),
        st.lists(st.integers(-5, 10**6), max_size=4),
    )
    obj[key] = draw(st.one_of(odd, st.dictionaries(st.text(max_size=4), odd, max_size=2)))
    return json.dumps(obj).encode(), f"{key} = {obj[key]!r}"[:120]


def fuzz_folder(worker, template: Path, work: Path, kind: str, accepted: frozenset):
    files = _folder_files(template)
    assert worker.read(kind, template) == {"outcome": "ok"}, f"the {kind} template must load"

    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(template, work)
        name = data.draw(st.sampled_from(files))
        raw = (work / name).read_bytes()
        if name.endswith(".json") and data.draw(st.booleans()):
            raw, op = _json_edit(raw, data.draw)
        else:
            raw, op = data.draw(mutated(raw))
        (work / name).write_bytes(raw)
        check(worker.read(kind, work), accepted, f"{kind} folder with {name} damaged ({op})", work.name)

    fuzz()


def test_scene_folder(worker, tmp_path):
    template = procedural_city(0, 16, points_per_m2=0.5).save(tmp_path / "template")
    fuzz_folder(worker, template, tmp_path / "scene", "scene", READERS)


def test_pipeline_folder(worker, tmp_path):
    template = tmp_path / "template"
    GaussianCityPipeline.from_preset("tiny").save_pretrained(template)
    fuzz_folder(worker, template, tmp_path / "pipeline", "pipeline", LOADING)


def test_the_harness_fails_on_a_blow_up_or_an_abort(worker, tmp_path):
    """Last in the module: the abort ends the worker (the next use would start another)."""
    with pytest.raises(AssertionError, match="undocumented MemoryError"):
        check(worker.read("allocate", tmp_path), READERS, "allocate", "")
    check(worker.read("scene", tmp_path / "missing"), READERS, "a missing scene", "missing")
    with pytest.raises(pytest.fail.Exception, match=r"killed its process \(exit code -6\)"):
        check(worker.read("abort", tmp_path), READERS, "abort", "")
