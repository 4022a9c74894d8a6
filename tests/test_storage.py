"""engine/storage.py: atomic writes survive crashes, reads explain what is wrong, backups recover."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from awkward_files import read_only_folder  # noqa: E402 - test helper next to this file
from dasr_annotator.engine.store import storage
from dasr_annotator.engine.store.storage import (
                                                 ProjectFileError,
                                                 atomic_write_bytes,
                                                 atomic_write_json,
                                                 atomic_write_text,
                                                 backup_path,
                                                 is_writable_dir,
                                                 read_json,
                                                 read_json_with_recovery,
                                                 restore_backup,
                                                 user_cache_dir,
                                                 )


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name not in keep)


def test_round_trips_and_one_backup_generation(tmp_path):
    path = tmp_path / "labels.json"
    for version in range(1, 4):
        atomic_write_json(path, {"version": version, "name": "café ☕"})
    assert read_json(path) == {"version": 3, "name": "café ☕"}
    assert read_json(backup_path(path)) == {"version": 2, "name": "café ☕"}
    assert _leftovers(tmp_path, {"labels.json", "labels.json.bak"}) == []
    atomic_write_text(tmp_path / "note.txt", "héllo\n", backup=False)
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    assert not backup_path(tmp_path / "note.txt").exists()
    atomic_write_bytes(tmp_path / "blob.bin", bytes(range(256)))
    atomic_write_bytes(tmp_path / "blob.bin", b"second")
    assert (tmp_path / "blob.bin").read_bytes() == b"second"
    assert backup_path(tmp_path / "blob.bin").read_bytes() == bytes(range(256))


def test_backup_is_a_snapshot_not_the_same_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, [1])
    atomic_write_json(path, [2])
    atomic_write_json(path, [3])
    assert os.stat(path).st_ino != os.stat(backup_path(path)).st_ino
    assert read_json(backup_path(path)) == [2]


def test_permissions_are_kept_and_new_files_follow_the_umask(tmp_path):
    path = tmp_path / "private.json"
    atomic_write_json(path, {})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    os.chmod(path, 0o600)
    atomic_write_json(path, {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch, failing):
    path = tmp_path / "labels.json"
    atomic_write_json(path, {"version": 1})
    atomic_write_json(path, {"version": 2})

    def disk_error(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "replace":
        real_replace = os.replace

        def replace_fails_on_the_main_file(src, dst):
            if Path(dst) == path:
                disk_error()
            real_replace(src, dst)

        monkeypatch.setattr(storage.os, "replace", replace_fails_on_the_main_file)
    elif failing == "fsync":
        monkeypatch.setattr(storage.os, "fsync", disk_error)
    else:
        real_fdopen = os.fdopen

        class FullDisk:
            def __init__(self, *args, **kwargs):
                self._file = real_fdopen(*args, **kwargs)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._file.close()

            def write(self, data):
                self._file.write(data[: len(data) // 2])
                disk_error()

        monkeypatch.setattr(storage.os, "fdopen", FullDisk)
    with pytest.raises(ProjectFileError, match="No space left"):
        atomic_write_json(path, {"version": 3})
    monkeypatch.undo()
    assert read_json(path, fallback_to_backup=False) == {"version": 2}
    assert read_json(backup_path(path)) in ({"version": 1}, {"version": 2})
    assert _leftovers(tmp_path, {"labels.json", "labels.json.bak"}) == []


def test_unserialisable_data_changes_nothing(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"score": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"tags": {1, 2}})
    assert read_json(path) == {"ok": True} and not backup_path(path).exists()


def test_saving_into_a_missing_folder_says_why(tmp_path):
    with pytest.raises(ProjectFileError, match="No such file"):
        atomic_write_json(tmp_path / "gone" / "a.json", {})


_WRITER = """
import sys
from dasr_annotator.engine.store.storage import atomic_write_json
i = 0
print("ready", flush=True)
while True:
    atomic_write_json(sys.argv[1], {"i": i, "pad": "x" * 200000})
    i += 1
"""


def test_killed_writer_leaves_a_whole_file_and_its_previous_generation(tmp_path):
    path = tmp_path / "state.json"
    for round_number in range(3):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.25 + 0.1 * round_number)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
        current = read_json(path, fallback_to_backup=False)
        previous = read_json(backup_path(path), fallback_to_backup=False)
        # Killed between keeping the backup and the rename, both hold the same generation.
        assert current["i"] >= 1 and previous["i"] in (current["i"] - 1, current["i"])
        assert len(current["pad"]) == 200000
        # A killed writer may leave its temp file behind; it must never be mistaken for data.
        for stray in tmp_path.glob(".state.json.*"):
            stray.unlink()


def test_concurrent_writers_use_distinct_temp_files(tmp_path):
    path = tmp_path / "shared.json"
    errors = []

    def write_many(worker: int):
        try:
            for i in range(15):
                atomic_write_json(path, {"worker": worker, "i": i})
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=write_many, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = read_json(path, fallback_to_backup=False)
    # each worker renames its writes in order, so the last rename of all is some worker's last write
    assert final["i"] == 14 and final["worker"] in range(6), final
    previous = read_json(backup_path(path), fallback_to_backup=False)  # the backup is a whole write too
    assert set(previous) == {"worker", "i"} and previous["worker"] in range(6) and 0 <= previous["i"] <= 14
    assert _leftovers(tmp_path, {"shared.json", "shared.json.bak"}) == []


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "missing"),
        (b"", "empty"),
        (b"  \n", "empty"),
        (b'{"a": 1,', "invalid JSON at line 1"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object, found a array"),
        ("dir", "cannot read"),
    ],
)
def test_bad_files_raise_project_file_error_with_a_reason(tmp_path, content, words):
    path = tmp_path / "labels.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ProjectFileError) as caught:
        read_json(path, expect=dict)
    assert words in caught.value.message and "labels.json" in caught.value.message


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ProjectFileError, match="nested too deeply"):
        read_json(path)


def test_damaged_main_file_recovers_from_its_backup_and_says_so(tmp_path, caplog):
    path = tmp_path / "labels.json"
    atomic_write_json(path, {"labels": ["cup"]})
    atomic_write_json(path, {"labels": ["cup", "mug"]})
    path.write_bytes(b'{"labels": ["cup", "mu')  # torn by some other program
    data, note = read_json_with_recovery(path, expect=dict)
    assert data == {"labels": ["cup"]}
    assert "damaged" in note and "labels.json.bak" in note
    with caplog.at_level("WARNING"):
        assert read_json(path) == {"labels": ["cup"]}
    assert "labels.json.bak" in caplog.text
    with pytest.raises(ProjectFileError, match="damaged"):
        read_json(path, fallback_to_backup=False)
    restore_backup(path)
    assert read_json_with_recovery(path) == ({"labels": ["cup"]}, None)


def test_good_main_file_ignores_a_bad_backup_and_both_bad_is_an_error(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"ok": 1}')
    backup_path(path).write_text("rubbish")
    assert read_json_with_recovery(path) == ({"ok": 1}, None)
    path.write_text("also rubbish")
    with pytest.raises(ProjectFileError, match="unusable too"):
        read_json_with_recovery(path)
    backup_path(path).unlink()
    with pytest.raises(ProjectFileError, match="damaged") as caught:
        read_json(path)
    assert "bak" not in caught.value.message


def test_wrong_type_in_main_falls_back_to_a_backup_of_the_right_type(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('"just a string"')
    backup_path(path).write_text('{"backbone": "efficientnet-lite0"}')
    data, note = read_json_with_recovery(path, expect=dict)
    assert data == {"backbone": "efficientnet-lite0"} and "expected a JSON object" in note


def test_user_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DASR_ANNOTATOR_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DASR_ANNOTATOR_CACHE")
    assert user_cache_dir() == tmp_path / "xdg" / "dasr-annotator"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(storage.sys, "platform", "linux")
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "dasr-annotator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "dasr-annotator"
    assert not user_cache_dir().exists(), "asking for the folder must not create it"


def test_is_writable_dir(tmp_path):
    assert is_writable_dir(tmp_path)
    assert os.listdir(tmp_path) == [], "the probe file is removed"
    assert not is_writable_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    assert not is_writable_dir(tmp_path / "file")


def test_is_writable_dir_sees_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with read_only_folder(folder):
        assert not is_writable_dir(folder)
        with pytest.raises(ProjectFileError):
            atomic_write_json(folder / "labels.json", {})
    assert is_writable_dir(folder)


def test_read_json_reads_plain_json_written_by_others(tmp_path):
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps({"a": [1, 2.5, None, True]}))
    assert read_json(path, expect=dict) == {"a": [1, 2.5, None, True]}


def test_json_with_non_utf8_file_names_round_trips(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")  # how os.walk names a Latin-1 file on a UTF-8 system
    path = tmp_path / "labels.json"
    atomic_write_json(path, {"image": name, "label": "tasse ☕"})
    assert read_json(path) == {"image": name, "label": "tasse ☕"}
    assert os.fsencode(read_json(path)["image"]) == b"caf\xe9.jpg"
