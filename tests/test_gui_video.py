"""Videos in the window: one file-list entry per video that expands to its frames with their
times, the canvas showing a frame, hit tiles and tooltips showing the time, video sampling in
Settings, and propagating a label to the neighbouring frames. Drives the real widgets (offscreen) on
a clip encoded from dev frames."""
from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from dasr_annotator.app.gui import settings as app_settings
from dasr_annotator.app.gui.document import ACCEPTED, PENDING
from dasr_annotator.app.gui.main_window import MainWindow
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.collection import scan_images
from dasr_annotator.engine.types import Box
from dasr_annotator.widgets.file_list import FileListModel, StatusRole
from dasr_annotator.widgets.result_grid import HitListModel, HitRow
from tests.test_gui_flow import INDEX_TIMEOUT_MS, wait_for_image, window_on  # noqa: F401 - fixture
from tests.video_clips import dev_clip, dev_frames


@pytest.fixture
def folder(tmp_path, dev_data):
    photos = tmp_path / "photos"
    (photos / "clips").mkdir(parents=True)
    frames = dev_frames(dev_data, 9)
    Image.fromarray(frames[0][0]).save(photos / "photo.jpg")
    dev_clip(photos / "clips" / "box.mp4", [rgb for rgb, _ in frames], fps=4)
    return photos


FRAMES = ["clips/box.mp4#frame=0", "clips/box.mp4#frame=4", "clips/box.mp4#frame=8"]
TIMES = {"clips/box.mp4#frame=0": 0.0, "clips/box.mp4#frame=4": 1.0, "clips/box.mp4#frame=8": 2.0}


def shown(model) -> list[str]:
    return [model.data(model.index(r)) for r in range(model.rowCount())]


def test_a_video_is_one_entry_that_expands_to_its_frames_with_times(qtbot):
    model = FileListModel()
    model.set_images(["a.jpg"] + FRAMES + ["z.jpg"], TIMES)
    assert shown(model) == ["a.jpg", "▸ clips/box.mp4", "z.jpg"]
    assert model.image_at(1) == FRAMES[0] and model.row_of(FRAMES[2]) == 1
    assert model.toggle(1) and not model.toggle(0)
    assert shown(model) == ["a.jpg", "▾ clips/box.mp4", "    0:00.0  · frame 0", "    0:01.0  · frame 4",
                            "    0:02.0  · frame 8", "z.jpg"]
    assert model.row_of(FRAMES[1]) == 3 and model.image_at(3) == FRAMES[1]
    model.set_counts({FRAMES[1]: 2}, {FRAMES[2]: 1})
    assert model.data(model.index(1), StatusRole) == "hits pending"  # the video sums its frames
    assert "3 frames, 0:02.0 · 2 labels · 1 hit pending" in model.data(model.index(1), Qt.ToolTipRole)
    model.toggle(1)
    assert shown(model) == ["a.jpg", "▸ clips/box.mp4", "z.jpg"]
    assert model.paths() == ["a.jpg"] + FRAMES + ["z.jpg"]


def test_hits_in_videos_show_their_time(qtbot):
    model = HitListModel()
    model.frame_times = TIMES
    model.set_rows([HitRow(1, FRAMES[1], 0.8, Box(1, 1, 5, 5), "pending"),
                    HitRow(2, "photo.jpg", 0.7, Box(1, 1, 5, 5), "pending")])
    assert "at 0:01.0 in the video" in model.data(model.index(0), Qt.ToolTipRole)
    assert "in the video" not in model.data(model.index(1), Qt.ToolTipRole)


def test_window_lists_the_video_and_shows_its_frames(qtbot, folder, window_on):  # noqa: F811
    window = window_on(folder, prefs=app_settings.Preferences(device="cpu", max_side=128))
    qtbot.waitUntil(lambda: window.file_model.rowCount() > 0, timeout=20_000)
    # the first row is the video; showing it expands it to its frames
    qtbot.waitUntil(lambda: window.current_image == FRAMES[0], timeout=10_000)
    assert shown(window.file_model)[:4] == ["▾ clips/box.mp4", "    0:00.0  · frame 0", "    0:01.0  · frame 4",
                                            "    0:02.0  · frame 8"]
    wait_for_image(qtbot, window, FRAMES[1])
    assert window.canvas.image_size == (160, 120)
    assert window.file_view.currentIndex().row() == 2
    window.step_image(1)
    assert window.current_image == FRAMES[2]
    window.step_image(1)
    assert window.current_image == "photo.jpg"


def test_frames_are_in_frame_number_order_in_the_scan_and_the_window(qtbot, tmp_path, dev_data, window_on):  # noqa: F811
    """A video of 12 sampled frames among photos: frame 10 comes after frame 8, not after frame 0
    (plain string order), in the scan, the file list, stepping and frames added later."""
    photos = tmp_path / "photos"
    (photos / "clips").mkdir(parents=True)
    frames = [rgb for rgb, _ in dev_frames(dev_data, 24)]
    Image.fromarray(frames[0]).save(photos / "clips" / "a.jpg")
    Image.fromarray(frames[1]).save(photos / "clips" / "c.jpg")
    dev_clip(photos / "clips" / "b.mp4", frames, fps=2)
    sampled = [f"clips/b.mp4#frame={n}" for n in range(0, 24, 2)]  # 1 frame per second of a 12 s clip
    listed = ["clips/a.jpg", *sampled, "clips/c.jpg"]
    assert scan_images(photos).files == listed

    window = window_on(photos, prefs=app_settings.Preferences(device="cpu", max_side=128))
    qtbot.waitUntil(lambda: window.document is not None, timeout=60_000)
    model = window.file_model
    assert model.paths() == listed
    wait_for_image(qtbot, window, sampled[4])  # frame 8: its video expands
    assert [model.image_at(row) for row in range(2, 14)] == sampled
    assert shown(model)[6:8] == ["    0:04.0  · frame 8", "    0:05.0  · frame 10"]
    window.add_video_frames({"clips/b.mp4#frame=19": 9.5, "clips/b.mp4#frame=9": 4.5})
    assert model.paths()[5:8] == ["clips/b.mp4#frame=8", "clips/b.mp4#frame=9", "clips/b.mp4#frame=10"]
    assert model.paths()[11:14] == ["clips/b.mp4#frame=18", "clips/b.mp4#frame=19", "clips/b.mp4#frame=20"]
    assert model.row_of("clips/b.mp4#frame=9") == model.row_of("clips/b.mp4#frame=8") + 1
    window.step_image(1)
    assert window.current_image == "clips/b.mp4#frame=9"
    window.step_image(1)
    assert window.current_image == "clips/b.mp4#frame=10"
    assert window.file_view.currentIndex().row() == model.row_of("clips/b.mp4#frame=10") == 8


def test_video_sampling_and_propagation_span_are_set_in_settings(qtbot, folder, window_on, monkeypatch):  # noqa: F811
    from dasr_annotator.widgets import dialogs

    window = window_on(folder, prefs=app_settings.Preferences(device="cpu", max_side=128))
    qtbot.waitUntil(lambda: window.project is not None, timeout=20_000)

    def accept_with_two_fps(dialog):
        assert dialog._editors["video_fps"].value() == 1.0
        dialog._editors["video_fps"].setValue(2.0)
        assert dialog._editors["propagate_seconds"].value() == 2.0 and dialog._editors["propagate_fps"].value() == 10.0
        dialog._editors["propagate_seconds"].setValue(1.5)
        return dialogs.SettingsDialog.Accepted

    monkeypatch.setattr(dialogs.SettingsDialog, "exec", accept_with_two_fps)
    window.project_actions.edit_settings()
    assert Project.open(folder).video_fps() == 2.0
    assert window.prefs.propagate_seconds == 1.5 and app_settings.load_preferences().propagate_seconds == 1.5


# ---- propagating a label to the neighbouring frames ---------------------------------------------
# the clip is 9 frames at 4 fps, listed at 1 fps (frames 0, 4, 8); propagating frame 4 (1.0 s)
# 0.5 s either way at 4 fps looks at frames 3 and 5 (0.25 s away), then 2 and 6 (0.5 s)
PROPAGATING = app_settings.Preferences(device="cpu", max_side=128, propagate_seconds=0.5, propagate_fps=4.0)
NEIGHBOURS = [f"clips/box.mp4#frame={n}" for n in (3, 5, 2, 6)]


def indexed_window(qtbot, window_on, folder):  # noqa: F811
    window = window_on(folder, prefs=PROPAGATING)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    return window


def show(qtbot, window, rel):
    """Show `rel` and wait until the canvas shows it (with its boxes)."""
    wait_for_image(qtbot, window, rel)
    qtbot.waitUntil(lambda: window.canvas_image == rel, timeout=10_000)


def is_propagation(session) -> bool:
    return session is not None and session.title.startswith("box · frames around")


def test_propagate_offers_the_neighbouring_frames_as_hits_to_review(qtbot, folder, dev_data, window_on):  # noqa: F811
    window = indexed_window(qtbot, window_on, folder)
    doc, action = window.document, window.action["propagate"]
    show(qtbot, window, "photo.jpg")
    assert not action.isEnabled() and "not from a video" in action.toolTip()
    show(qtbot, window, FRAMES[1])
    assert not action.isEnabled() and "Label a box on this video frame" in action.toolTip()
    truth = [box for _, box in dev_frames(dev_data, 9)]
    doc.add_annotation(FRAMES[1], "box", Box(*truth[4]))
    assert action.isEnabled() and "frames around it" in action.toolTip()

    action.trigger()
    assert window.controller.is_propagating and window.progress.cancel.isVisible()
    qtbot.waitUntil(lambda: is_propagation(doc.hits), timeout=60_000)
    hits = doc.hits
    assert [e.image for e in hits.entries] == NEIGHBOURS  # nearest in time first
    assert {e.status for e in hits.entries} == {PENDING} and len(doc.annotations()) == 1  # nothing labelled yet
    assert {e.image for e in window.review.waiting()} == set(NEIGHBOURS)  # each frame is to review
    assert hits.title == "box · frames around 0:01.0"
    # the hits show their times; the frames sampled finer are listed under the video
    tips = [window.results.model.data(window.results.model.index(r), Qt.ToolTipRole) for r in range(4)]
    assert [t.split("\nat ")[1] for t in tips] == [f"{t} in the video" for t in ("0:00.8", "0:01.2", "0:00.5", "0:01.5")]
    assert window.file_model.paths()[:7] == [f"clips/box.mp4#frame={n}" for n in (0, 2, 3, 4, 5, 6, 8)]
    assert "    0:00.8  · frame 3" in shown(window.file_model)
    # the review starts at the nearest frame, which the canvas shows (decoded off the UI thread)
    assert window.results.current_key() == hits.entries[0].key
    qtbot.waitUntil(lambda: window.canvas_image == NEIGHBOURS[0], timeout=10_000)

    window.action["accept"].trigger()
    added = [a for a in doc.annotations() if a.image == NEIGHBOURS[0]]
    assert hits.entries[0].status == ACCEPTED and len(added) == 1 and added[0].category == "box"
    assert added[0].box == hits.entries[0].box and added[0].source == "search"
    assert window.file_model.state(NEIGHBOURS[0]).labels == 1
    # the folder listed again, as when indexing finishes: the added frames keep their counts
    window.list_images(list(window.controller.images), window.project.frame_times)
    assert window.file_model.state(NEIGHBOURS[0]).labels == 1
    assert window.file_model.state(NEIGHBOURS[1]).pending == 1
    window.undo_redo(undo=True)
    assert [a.image for a in doc.annotations()] == [FRAMES[1]] and hits.entries[0].status == PENDING

    # a hit on a frame can be propagated in turn; a photo cannot
    window.results.select_key(hits.entries[2].key)
    qtbot.waitUntil(lambda: window.current_image == NEIGHBOURS[2] and action.isEnabled(), timeout=10_000)
    show(qtbot, window, "photo.jpg")
    assert not action.isEnabled()


def test_a_new_query_cancels_a_running_propagation_and_errors_reach_the_user(qtbot, folder, window_on):  # noqa: F811
    window = indexed_window(qtbot, window_on, folder)
    doc, controller = window.document, window.controller
    show(qtbot, window, FRAMES[1])
    ann_id = doc.add_annotation(FRAMES[1], "box", Box(40, 30, 60, 50))
    window.action["propagate"].trigger()
    first = controller._search_task
    window.action["propagate"].trigger()  # a newer propagation replaces it
    second = controller._search_task
    assert first.is_cancelled() and first.kind == second.kind == "Propagation"

    window.canvas.select([f"ann:{ann_id}"])
    window.action["find_similar"].trigger()  # a search replaces the propagation
    assert second.is_cancelled() and controller._search_task.kind == "Search"
    qtbot.waitUntil(lambda: doc.hits is not None, timeout=60_000)
    assert doc.hits.title == "box · 1 example" and not any(is_propagation(s) for s in doc.sessions)
    assert window.progress.task.text() != "Propagating to neighbouring frames…"

    # the Cancel in the status bar stops a propagation; a failing one says why
    window.show_image(FRAMES[1])
    window.action["propagate"].trigger()
    with qtbot.waitSignal(controller.propagationStopped, timeout=60_000):
        window.progress.cancel.click()
    (folder / "clips" / "box.mp4").write_bytes(b"not a video")
    window.action["propagate"].trigger()
    qtbot.waitUntil(lambda: "Propagation failed" in window.message_bar.text(), timeout=60_000)
    assert not controller.is_propagating and not any(is_propagation(s) for s in doc.sessions)
