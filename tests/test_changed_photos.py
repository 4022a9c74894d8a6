"""Photos that change after indexing (issue 17): edited ones are indexed again, deleted ones
dropped, renamed or moved ones keep their labels (followed by content), labels of photos that are
gone are kept and reported, and a search never returns a photo that no longer exists."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from dasr_annotator.app.main import main
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.types import Box


def _index(photos, capsys) -> dict:
    capsys.readouterr()
    assert main(["index", str(photos), "--max-side", "96", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _search_images(photos, capsys, query="a.jpg") -> set[str]:
    capsys.readouterr()
    assert main(["search", str(photos), "--query", query, "--box", "5,5,60,60", "--top", "20", "--json"]) == 0
    return {h["image"] for q in json.loads(capsys.readouterr().out)["queries"] for h in q["hits"]}


def test_edited_renamed_and_deleted_photos(dev_data, dev_manifest, tmp_path, capsys, one_torch_thread):
    photos = tmp_path / "photos"
    photos.mkdir()
    files = [i["images"][0]["file"] for i in dev_manifest["instances"][:5]]
    for name, source in zip("abcde", files):
        shutil.copy(dev_data / source, photos / f"{name}.jpg")
    assert _index(photos, capsys)["images"] == 5
    store = Project.open(photos).annotations
    labels = {name: store.add(f"{name}.jpg", "thing", Box(2, 2, 20, 20)).id for name in "abc"}
    store.save()

    shutil.copy(dev_data / files[4], photos / "a.jpg")  # edited: new content under the same name
    os.utime(photos / "a.jpg", ns=(1, 1))
    (photos / "sub").mkdir()
    os.rename(photos / "b.jpg", photos / "sub" / "b-renamed.jpg")  # renamed and moved
    (photos / "c.jpg").unlink()  # deleted
    assert "c.jpg" not in _search_images(photos, capsys, "d.jpg"), "a deleted photo is never a hit, even before re-indexing"

    report = _index(photos, capsys)
    assert report["images"] == 4 and report["removed"] == 2  # b.jpg (as its old name) and c.jpg
    assert report["indexed"] == 2  # a.jpg (edited) and sub/b-renamed.jpg
    assert report["renamed"] == [{"from": "b.jpg", "to": "sub/b-renamed.jpg", "labels": 1}]
    assert report["missing_labelled"] == [{"file": "c.jpg", "labels": 1}]
    after = {a.id: a.image for a in Project.open(photos).annotations.list()}
    assert after == {labels["a"]: "a.jpg", labels["b"]: "sub/b-renamed.jpg", labels["c"]: "c.jpg"}
    hits = _search_images(photos, capsys, "d.jpg")
    assert "c.jpg" not in hits and "b.jpg" not in hits and "sub/b-renamed.jpg" in hits


def test_labels_of_a_renamed_video_follow_frame_by_frame_and_resampling_moves_none(dev_data, tmp_path, capsys,
                                                                                  one_torch_thread):
    from tests.video_clips import dev_clip, dev_frames

    photos = tmp_path / "photos"
    photos.mkdir()
    dev_clip(photos / "clip.mp4", [rgb for rgb, _ in dev_frames(dev_data, 9)], fps=4)
    project = Project.open(photos)
    project.set_video_fps(2)  # frames 0, 2, 4, 6, 8: every frame shares the video's content hash
    assert _index(photos, capsys)["images"] == 5
    store = Project.open(photos).annotations
    labels = {n: store.add(f"clip.mp4#frame={n}", "thing", Box(2, 2, 20, 20)).id for n in (2, 4)}
    store.save()

    os.rename(photos / "clip.mp4", photos / "renamed.mp4")
    report = _index(photos, capsys)
    assert sorted(report["renamed"], key=lambda r: r["from"]) == [
        {"from": "clip.mp4#frame=2", "to": "renamed.mp4#frame=2", "labels": 1},
        {"from": "clip.mp4#frame=4", "to": "renamed.mp4#frame=4", "labels": 1}]
    after = {a.id: a.image for a in Project.open(photos).annotations.list()}
    assert after == {labels[2]: "renamed.mp4#frame=2", labels[4]: "renamed.mp4#frame=4"}

    # Sampled anew, some frames go and others come, all with the same hash: a label stays on its frame.
    Project.open(photos).set_video_fps(1.5)
    report = _index(photos, capsys)
    assert report["renamed"] == []
    after = {a.id: a.image for a in Project.open(photos).annotations.list()}
    assert after == {labels[2]: "renamed.mp4#frame=2", labels[4]: "renamed.mp4#frame=4"}
    sampled = set(Project.open(photos).scan())
    assert {m["file"] for m in report["missing_labelled"]} == {n for n in after.values() if n not in sampled}


def test_a_photo_changed_while_it_was_extracted_is_kept_without_hash_or_map(dev_data, dev_manifest, tmp_path,
                                                                            one_torch_thread):
    """The per-photo step local and Ray indexing share (extraction.finish_photo): a photo whose
    file changed after it was planned keeps its regions but no content hash (so it is extracted
    again and never matched by content) and no relocation map; a photo gone is skipped with a reason."""
    from dasr_annotator.engine.dasr.extractor import Extractor
    from dasr_annotator.engine.project.extraction import finish_photo, skip_reason
    from dasr_annotator.engine.store.collection import FileEntry, content_hash, fingerprint
    from dasr_annotator.engine.store.imageio import load_image

    extractor = Extractor(device="cpu", max_side=96)
    first, second = (dev_data / i["images"][0]["file"] for i in dev_manifest["instances"][:2])
    path = tmp_path / "a.jpg"
    shutil.copy(first, path)

    def finish(planned):
        image = load_image(path, max_side=96)
        return finish_photo(extractor, "a.jpg", planned, path, image, extractor.extract(image))

    planned = fingerprint(path)
    photo = finish(planned)
    assert photo.entry == FileEntry("a.jpg", planned.size, planned.mtime_ns, content_hash(path),
                                    photo.regions.width, photo.regions.height)
    assert photo.regions.regions and photo.relocation_map is not None
    assert photo.regions.relocation_map is None  # the map is stored apart from the regions

    shutil.copy(second, path)  # the file changes between planning and hashing
    changed = finish(planned)
    assert changed.entry.sha256 == "" and changed.relocation_map is None
    assert (changed.entry.size, changed.entry.mtime_ns) == (planned.size, planned.mtime_ns)

    image = load_image(path, max_side=96)
    regions = extractor.extract(image)
    path.unlink()
    with pytest.raises(OSError) as gone:
        finish_photo(extractor, "a.jpg", planned, path, image, regions)
    assert skip_reason(gone.value).startswith("cannot read the file:")
