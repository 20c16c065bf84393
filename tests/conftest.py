"""Shared fixtures. The whole suite runs offline: nothing may reach the Hugging Face Hub."""

from __future__ import annotations

import os

# huggingface_hub reads these when it is imported; set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from huggingface_hub import CommitInfo, HfApi, RepoUrl, constants, hf_api  # noqa: E402

constants.HF_HUB_OFFLINE = True  # in case a plugin imported huggingface_hub before the env var was set
from huggingface_hub.file_download import repo_folder_name  # noqa: E402
from huggingface_hub.utils import filter_repo_objects  # noqa: E402

_PATCHED = ("create_repo", "upload_folder", "upload_file")


class OfflineHub:
    """A local stand-in for the Hub that writes straight into a private HF cache.

    ``create_repo`` / ``upload_folder`` / ``upload_file`` record a new commit as a snapshot of
    the cache (``<cache>/models--org--name/snapshots/<sha>/``, ``refs/main``), so every
    loader that reads the HF cache (``DiffusionPipeline.from_pretrained("org/name")``,
    ``ModelMixin.from_pretrained``, ``ModelCard.load``, ``hf_hub_download``) finds the pushed
    files, with the Hub in offline mode. A repo id without a namespace gets ``user``'s, as
    the Hub does for the logged-in user.
    """

    endpoint = "https://huggingface.co"

    def __init__(self, cache_dir: Path, user: str = "offline-user"):
        self.cache_dir = Path(cache_dir)
        self.user = user
        self._commits = itertools.count(1)

    def full_repo_id(self, repo_id: str) -> str:
        return repo_id if "/" in repo_id else f"{self.user}/{repo_id}"

    def repo_folder(self, repo_id: str, repo_type: str | None = None) -> Path:
        name = repo_folder_name(repo_id=self.full_repo_id(repo_id), repo_type=repo_type or "model")
        return self.cache_dir / name

    def snapshot(self, repo_id: str, repo_type: str | None = None) -> Path:
        """Folder of the repo's current ``main`` commit (``FileNotFoundError`` when the repo does not exist)."""
        folder = self.repo_folder(repo_id, repo_type)
        ref = folder / "refs" / "main"
        if not ref.is_file():
            raise FileNotFoundError(f"offline hub: no repo {self.full_repo_id(repo_id)}")
        return folder / "snapshots" / ref.read_text().strip()

    def files(self, repo_id: str, repo_type: str | None = None) -> list[str]:
        """Sorted paths of the files in the repo's current commit."""
        root = self.snapshot(repo_id, repo_type)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def _commit(self, repo_id: str, repo_type: str | None, message: str, write) -> CommitInfo:
        """New snapshot = previous snapshot + ``write(snapshot_folder)``; moves ``refs/main``."""
        folder = self.repo_folder(repo_id, repo_type)
        sha = hashlib.sha1(f"{repo_id}:{next(self._commits)}".encode()).hexdigest()
        new = folder / "snapshots" / sha
        try:
            shutil.copytree(self.snapshot(repo_id, repo_type), new)
        except FileNotFoundError:
            raise FileNotFoundError(f"offline hub: repo {self.full_repo_id(repo_id)} does not exist") from None
        write(new)
        (folder / "refs" / "main").write_text(sha)
        url = f"{self.endpoint}/{self.full_repo_id(repo_id)}/commit/{sha}"
        return CommitInfo(commit_url=url, commit_message=message, commit_description="", oid=sha)

    def create_repo(self, repo_id: str, *, repo_type: str | None = None, exist_ok: bool = False, **_) -> RepoUrl:
        folder = self.repo_folder(repo_id, repo_type)
        if (folder / "refs" / "main").is_file():
            if not exist_ok:
                raise FileExistsError(f"offline hub: repo {self.full_repo_id(repo_id)} already exists")
        else:
            sha = hashlib.sha1(f"{repo_id}:init".encode()).hexdigest()
            (folder / "snapshots" / sha).mkdir(parents=True)
            (folder / "refs").mkdir(parents=True, exist_ok=True)
            (folder / "refs" / "main").write_text(sha)
        return RepoUrl(f"{self.endpoint}/{self.full_repo_id(repo_id)}", endpoint=self.endpoint)

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path,
        path_in_repo: str | None = None,
        commit_message: str | None = None,
        repo_type: str | None = None,
        allow_patterns=None,
        ignore_patterns=None,
        delete_patterns=None,
        **_,
    ) -> CommitInfo:
        source = Path(folder_path)
        if not source.is_dir():
            raise ValueError(f"offline hub: {source} is not a folder")
        relative = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]
        chosen = list(filter_repo_objects(relative, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        prefix = (path_in_repo or "").strip("/")

        def write(snapshot: Path) -> None:
            if delete_patterns:
                existing = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
                for name in filter_repo_objects(existing, allow_patterns=delete_patterns):
                    (snapshot / name).unlink()
            for name in chosen:
                target = snapshot / prefix / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, target)

        return self._commit(repo_id, repo_type, commit_message or "Upload folder", write)

    def upload_file(
        self,
        *,
        path_or_fileobj,
        path_in_repo: str,
        repo_id: str,
        repo_type: str | None = None,
        commit_message: str | None = None,
        **_,
    ) -> CommitInfo:
        if isinstance(path_or_fileobj, (str, Path)):
            data = Path(path_or_fileobj).read_bytes()
        elif isinstance(path_or_fileobj, bytes):
            data = path_or_fileobj
        else:
            data = path_or_fileobj.read()

        def write(snapshot: Path) -> None:
            target = snapshot / path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

        return self._commit(repo_id, repo_type, commit_message or f"Upload {path_in_repo}", write)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> OfflineHub:
    """An ``OfflineHub`` in a fresh HF cache; the Hub API and cache are redirected to it for this test.

    Patches: ``huggingface_hub.constants.HF_HUB_CACHE`` -> the temp cache and ``HF_HUB_OFFLINE``
    -> True (both are read when huggingface_hub is imported, so the constants themselves are
    patched; the env vars are set too, for subprocesses); ``create_repo``, ``upload_folder`` and
    ``upload_file`` -> the stand-in, on ``huggingface_hub``, on ``HfApi`` and in every loaded
    module that imported them by name (e.g. ``diffusers.utils.hub_utils``). Example::

        def test_push(offline_hub):
            pipe.push_to_hub("org/tiny")              # or push_folder_to_hub(...)
            assert "model_index.json" in offline_hub.files("org/tiny")
            DiffusionPipeline.from_pretrained("org/tiny")   # resolves from the stand-in

    Subprocesses see the cache (env vars) but not the patched upload functions.
    """
    hub = OfflineHub(tmp_path / "hf-hub-cache")
    hub.cache_dir.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub.cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in _PATCHED:
        original = getattr(hf_api, name)
        fake = getattr(hub, name)
        for module in list(sys.modules.values()):
            if getattr(module, "__dict__", {}).get(name) is original:
                monkeypatch.setattr(module, name, fake)
        monkeypatch.setattr(sys.modules["huggingface_hub"], name, fake)
        monkeypatch.setattr(HfApi, name, lambda self, *args, _fake=fake, **kwargs: _fake(*args, **kwargs))
    return hub


@pytest.fixture(scope="class")
def contract_pipe(request):
    """The pipeline a ``PipelineContract`` subclass tests (``tests/pipeline_contract.py``), built once per class."""
    pipe = request.cls.make_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe
