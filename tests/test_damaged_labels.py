"""A damaged labels file (annotations.json) through the CLI: a clear message and exit 2, never a
traceback; never silently replaced by its backup; `label --restore-backup` puts a good backup
back and keeps the damaged file. (The window's offer: test_gui_flow.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dasr_annotator.app.main import main
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.storage import DamagedFile
from dasr_annotator.engine.types import Box


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Two photos and a labels file saved twice: the backup holds one label, the file two."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (64, 48), (120, 80, 40)).save(photos / name)
    project = Project.open(photos)
    store = project.annotations
    store.add("a.jpg", "mug", Box(2, 2, 20, 20))
    store.save()
    store.add("b.jpg", "mug", Box(4, 4, 10, 12))
    store.save()
    assert project.annotations_path.with_name("annotations.json.bak").exists()
    return photos


def _damage(path: Path) -> bytes:
    data = path.read_bytes()[:40]
    path.write_bytes(data)
    return data


def _state(photos: Path) -> Path:
    return photos / ".dasr"


def test_damaged_labels_without_a_backup_are_refused_with_a_reason(labelled, capsys):
    state = _state(labelled)
    (state / "annotations.json.bak").unlink()
    damaged = _damage(state / "annotations.json")
    rc, out, err = run_cli(capsys, "label", labelled, "--query", "a.jpg", "--box", "1,1,10,10", "--category", "mug",
                           "--accept-top", "1")
    assert rc == 2 and out == ""
    assert err.startswith("dasr-annotator label: ") and "annotations.json is damaged: invalid JSON" in err
    assert "no usable backup" in err
    rc, _, err = run_cli(capsys, "label", labelled, "--import-coco", labelled / "missing.json")
    assert rc == 2 and "annotations.json is damaged" in err
    rc, _, err = run_cli(capsys, "label", labelled, "--restore-backup")
    assert rc == 2 and "no usable backup to restore" in err
    assert (state / "annotations.json").read_bytes() == damaged  # left as it was, for repair


def test_a_good_backup_is_named_and_restored_on_request(labelled, capsys, tmp_path):
    state = _state(labelled)
    backup = (state / "annotations.json.bak").read_bytes()
    damaged = _damage(state / "annotations.json")
    label = ["label", labelled, "--query", "a.jpg", "--box", "1,1,10,10", "--category", "mug", "--accept-top", "1"]
    for command in (label, ["export", labelled, "--coco", tmp_path / "out.json"]):
        rc, out, err = run_cli(capsys, *command)
        assert rc == 2 and out == "", err
        assert "annotations.json is damaged" in err and "annotations.json.bak is good (1 label," in err
        assert "dasr-annotator label PHOTOS --restore-backup" in err
    assert (state / "annotations.json").read_bytes() == damaged  # the backup is not used behind the user's back
    assert (state / "annotations.json.bak").read_bytes() == backup
    assert not (tmp_path / "out.json").exists()

    rc, out, err = run_cli(capsys, "label", labelled, "--restore-backup", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert set(report) == {"restored", "from", "damaged_copy", "annotations"} and report["annotations"] == 1
    assert (state / "annotations.json").read_bytes() == backup
    assert (state / "annotations.json.damaged").read_bytes() == damaged
    rc, out, err = run_cli(capsys, "export", labelled, "--coco", tmp_path / "out.json", "--json")
    assert rc == 0 and json.loads(out)["annotations"] == 1, err

    rc, _, err = run_cli(capsys, "label", labelled, "--restore-backup")  # intact now: nothing to restore
    assert rc == 2 and "not damaged" in err
    assert (state / "annotations.json").read_bytes() == backup
    rc, _, err = run_cli(capsys, "label", labelled, "--restore-backup", "--category", "mug")
    assert rc == 2 and "takes no other options" in err


def test_the_project_raises_damaged_file_naming_the_backup(labelled):
    state = _state(labelled)
    (state / "annotations.json").write_text('{"format": 1, "annotations": [')
    with pytest.raises(DamagedFile) as raised:
        Project.open(labelled).annotations  # noqa: B018
    assert raised.value.backup == state / "annotations.json.bak" and "--restore-backup" in raised.value.message
    project = Project.open(labelled)
    assert project.restore_labels_backup() == 1
    assert [a.image for a in project.annotations.list()] == ["a.jpg"]
