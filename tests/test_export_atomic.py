"""All-or-nothing multi-file outputs: ``atomic_folders`` and ``remove_stale_partials``."""

import os

import pytest

from diffusers_city.export.atomic import atomic_folders, atomic_write, remove_stale_partials


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _two_old_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "old.txt").write_text("old")
    return a, b


def test_atomic_folders_replace_all_or_nothing(tmp_path):
    a, b = _two_old_folders(tmp_path)
    with pytest.raises(OSError, match="disk full"), atomic_folders(a, b) as (new_a, new_b):
        (new_a / "new.txt").write_text("new")
        raise OSError("disk full")
    assert _names(a) == _names(b) == ["old.txt"]
    assert _names(tmp_path) == ["a", "b"]
    with atomic_folders(a, b) as (new_a, new_b):
        (new_a / "new.txt").write_text("new")
        (new_b / "new.txt").write_text("new")
    assert _names(a) == _names(b) == ["new.txt"]
    assert _names(tmp_path) == ["a", "b"]


def test_atomic_folders_failed_rename_restores_the_old_folders(tmp_path, monkeypatch):
    """A failure while the new folders move in (after the old ones moved aside) puts every old
    folder back: never a mix of old and new."""
    a, b = _two_old_folders(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".partial") and os.path.basename(dst) == "b":
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), atomic_folders(a, b) as (new_a, new_b):
        (new_a / "new.txt").write_text("new")
        (new_b / "new.txt").write_text("new")
    assert _names(a) == _names(b) == ["old.txt"]
    assert _names(tmp_path) == ["a", "b"]


def test_atomic_folders_removes_an_old_copy_a_killed_write_left_aside(tmp_path):
    """Killed between moving the old folder aside and moving the new one in: the old copy stays
    until a later write to the same path succeeds."""
    (tmp_path / ".pipe.ab12_x9z.old").mkdir()
    (tmp_path / ".other.ab12_x9z.old").mkdir()
    with atomic_folders(tmp_path / "pipe") as (folder,):
        (folder / "model.safetensors").write_text("new")
    assert _names(tmp_path) == [".other.ab12_x9z.old", "pipe"]


def test_atomic_folders_refuses_a_file_and_a_repeated_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"), atomic_folders(tmp_path / "f"):
        pass
    with pytest.raises(ValueError, match="given twice"), atomic_folders(tmp_path / "a", tmp_path / "a"):
        pass


def test_remove_stale_partials_takes_only_our_leftovers(tmp_path):
    """Temporary folders and files of our naming go; other files and moved-aside old folders
    (kept: they may be the only complete copy) stay."""
    for folder in (".checkpoint-7.partial", ".dense_vae.ab12_x9z.partial", ".pipeline.ab12_x9z.old"):
        (tmp_path / folder / "sub").mkdir(parents=True)
    for name in (".train_log.jsonl.ab12_x9z.tmp.jsonl", ".keep", "notes.partial", ".a.png.short.tmp.png"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_partials(tmp_path, "dense_vae")
    assert [p.name for p in removed] == [".dense_vae.ab12_x9z.partial"]
    remove_stale_partials(tmp_path)
    assert _names(tmp_path) == [".a.png.short.tmp.png", ".keep", ".pipeline.ab12_x9z.old", "notes.partial"]


def test_remove_stale_partials_recognises_the_temporaries_we_name(tmp_path):
    """What a SIGKILL inside ``atomic_write`` / ``atomic_folders`` would leave (their temporaries,
    recreated here under the names they had) is recognised and removed; the outputs stay."""
    with atomic_write(tmp_path / "frame.png") as tmp:
        tmp.write_bytes(b"png")
        file_name = tmp.name
    with atomic_folders(tmp_path / "pipe") as (folder,):
        folder_name = folder.name
    (tmp_path / file_name).write_text("half")
    (tmp_path / folder_name).mkdir()
    assert {p.name for p in remove_stale_partials(tmp_path)} == {file_name, folder_name}
    assert _names(tmp_path) == ["frame.png", "pipe"]
