"""Videos in the window: one file-list entry per video that expands to its frames with their
times, the canvas showing a frame, hit tiles and tooltips showing the time, video sampling in
Settings. Drives the real widgets (offscreen) on a clip encoded from dev frames."""
from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from dasr_annotator.app.gui import settings as app_settings
from dasr_annotator.app.gui.main_window import MainWindow
from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.types import Box
from dasr_annotator.widgets.file_list import FileListModel, StatusRole
from dasr_annotator.widgets.result_grid import HitListModel, HitRow
from tests.test_gui_flow import wait_for_image, window_on  # noqa: F401 - fixture
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


def test_video_sampling_is_set_in_settings(qtbot, folder, window_on, monkeypatch):  # noqa: F811
    from dasr_annotator.widgets import dialogs

    window = window_on(folder, prefs=app_settings.Preferences(device="cpu", max_side=128))
    qtbot.waitUntil(lambda: window.project is not None, timeout=20_000)

    def accept_with_two_fps(dialog):
        assert dialog._editors["video_fps"].value() == 1.0
        dialog._editors["video_fps"].setValue(2.0)
        return dialogs.SettingsDialog.Accepted

    monkeypatch.setattr(dialogs.SettingsDialog, "exec", accept_with_two_fps)
    window.project_actions.edit_settings()
    assert Project.open(folder).video_fps() == 2.0
