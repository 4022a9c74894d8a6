"""The window's plumbing without a window: the action table, preferences and layout in
QSettings, the engine worker's error handling and display-image loading."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QByteArray, QSettings
from PySide6.QtGui import QKeySequence

from dasr_annotator import resources
from dasr_annotator.app.gui import actions
from dasr_annotator.app.gui import settings
from dasr_annotator.app.gui.workers import EngineWorker, Task, UserMessage, describe_error, load_display_image
from dasr_annotator.engine.store.imageio import ImageError
from dasr_annotator.engine.store.storage import ProjectFileError
from dasr_annotator.engine.types import Box, Cancelled


def test_no_two_actions_share_a_key():
    seen = {}
    reserved = {"Return", "Enter"} | set(actions.CATEGORY_KEYS)  # handled by the window itself
    for spec in actions.ACTIONS:
        for key in spec.keys:
            normal = QKeySequence(key).toString()
            assert normal not in seen, f"{key} bound to {spec.name} and {seen.get(normal)}"
            assert normal not in reserved
            seen[normal] = spec.name


def test_the_issue_shortcuts_exist():
    keys = {spec.name: {QKeySequence(k).toString() for k in spec.keys} for spec in actions.ACTIONS}
    assert {"Ctrl+Z"} <= keys["undo"] and {"Ctrl+Shift+Z", "Ctrl+Y"} <= keys["redo"]
    assert {"Y"} <= keys["accept"] and {"N", "Backspace"} <= keys["reject"]
    assert {"J"} <= keys["next_hit"] and {"K"} <= keys["prev_hit"]
    assert {"A"} <= keys["prev_image"] and {"D"} <= keys["next_image"]
    assert {"Ctrl+=", "Ctrl++"} <= keys["zoom_in"] and {"Ctrl+-"} <= keys["zoom_out"]
    assert {"Ctrl+0"} <= keys["zoom_actual"] and {"Ctrl+F"} <= keys["fit"]
    assert {"F1", "?"} <= keys["shortcuts"] and {"Ctrl+S"} <= keys["save"] and {"Del"} <= keys["delete"]


def test_every_icon_and_the_style_sheet_ship(qapp):
    for spec in actions.ACTIONS:
        if spec.icon:
            assert not actions.icon(spec.icon).isNull(), spec.icon
    assert "QMainWindow" in resources.read_text("style.qss")


def test_shortcut_sheet_lists_every_key(qapp):
    """Each action's own row lists each of its keys as a whole entry (not as part of another key:
    "Ctrl+S" inside "Ctrl+Shift+S", "A" inside "Ctrl+Shift+A"), in the sheet the user sees."""
    from dasr_annotator.widgets.dialogs import ShortcutSheet

    sheet = ShortcutSheet(actions.shortcut_rows())
    table = sheet.table
    shown = {table.item(r, 1).text(): table.item(r, 2).text().split(", ") for r in range(table.rowCount())}
    for spec in actions.ACTIONS:
        if not spec.keys:
            continue
        row = shown.get(spec.text.replace("&", "").rstrip("…"))
        assert row is not None, f"no row for {spec.name}"
        for key in spec.keys:
            assert QKeySequence(key).toString(QKeySequence.NativeText) in row, (spec.name, key, row)
    assert shown["Pick category 1–9"] == ["1 … 9"]
    sheet.deleteLater()


def test_preferences_round_trip_and_reject_garbage(tmp_path):
    store = QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)
    prefs = settings.Preferences(device="cpu", top_k=40, overlap_iou=0.3)
    settings.save_preferences(prefs, store)
    assert settings.load_preferences(store, backbones=("efficientnet-lite0",)) == prefs
    for key, bad in (("device", "tpu"), ("top_k", "many"), ("max_side", 10), ("backbone", "alexnet")):
        store.setValue(f"preferences/{key}", bad)
    loaded = settings.load_preferences(store, backbones=("efficientnet-lite0", "resnet50"))
    defaults = settings.Preferences()
    assert (loaded.device, loaded.top_k, loaded.max_side, loaded.backbone) == (
        defaults.device, defaults.top_k, defaults.max_side, defaults.backbone)
    assert loaded.overlap_iou == pytest.approx(0.3)


def test_layout_from_another_version_is_ignored(tmp_path):
    store = QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat)
    settings.save_layout(QByteArray(b"geo"), QByteArray(b"state"), store)
    assert settings.load_layout(store) == (QByteArray(b"geo"), QByteArray(b"state"))
    store.setValue("layout/version", settings.LAYOUT_VERSION + 1)
    assert settings.load_layout(store) is None


def _run(task):
    worker, events = EngineWorker(), []
    worker.finished.connect(lambda tid, result: events.append(("finished", tid, result)))
    worker.failed.connect(lambda tid, message: events.append(("failed", tid, message)))
    worker.cancelled.connect(lambda tid: events.append(("cancelled", tid)))
    worker.progress.connect(lambda tid, done, total: events.append(("progress", done, total)))
    worker.run(task)
    return events


def test_worker_reports_results_progress_and_cancellation(qapp):
    def work(progress, cancel):
        for i in range(3):
            progress(i + 1, 3)
        return "ok"

    task = Task("demo", work)
    events = _run(task)
    assert events[-1] == ("finished", task.id, "ok") and ("progress", 3, 3) in events

    def stoppable(progress, cancel):
        if cancel():
            raise Cancelled()
        return "not cancelled"

    task = Task("demo", stoppable)
    task.cancel()
    assert _run(task) == [("cancelled", task.id)]


def test_worker_turns_exceptions_into_messages(qapp):
    def broken(progress, cancel):
        raise ProjectFileError("labels.json is damaged: invalid JSON at line 3")

    task = Task("demo", broken)
    assert _run(task) == [("failed", task.id, "labels.json is damaged: invalid JSON at line 3")]
    assert describe_error(ImageError("truncated image file")) == "truncated image file"
    assert "GPU ran out of memory" in describe_error(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert describe_error(KeyError("x")) == "KeyError: 'x'"
    assert describe_error(UserMessage("Nothing is indexed yet.")) == "Nothing is indexed yet."


def test_display_crop_shows_the_box_region(tmp_path, qapp):
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[100:200, 250:350] = (255, 0, 0)  # a red square on black
    Image.fromarray(rgb).save(tmp_path / "p.png")
    full, size = load_display_image(tmp_path / "p.png", max_side=200)
    assert size == (400, 300) and max(full.width(), full.height()) == 200
    crop, _ = load_display_image(tmp_path / "p.png", max_side=64, crop=Box(250, 100, 100, 100), margin=0.0)
    assert max(crop.width(), crop.height()) <= 64
    centre = crop.pixelColor(crop.width() // 2, crop.height() // 2)
    assert (centre.red(), centre.green(), centre.blue()) == (255, 0, 0)


def _outcome(vectors, images, query):
    from dasr_annotator.app.gui.controller import CandidateRegions, SearchOutcome, SearchRequest

    n = len(images)
    boxes = np.array([[10.0 * i, 0, 10, 10] for i in range(n)])
    regions = CandidateRegions(np.asarray(vectors, np.float32), images, boxes, np.zeros((n, 5)))
    return SearchOutcome(SearchRequest("x", []), [], np.asarray([query], np.float32), regions, n, n)


def test_feedback_ranking_uses_accepted_and_rejected_regions():
    from dasr_annotator.app.gui.review import feedback_ranking

    def unit(*v):
        v = np.array(v, np.float32)
        return v / np.linalg.norm(v)

    # a: like the query; b: unlike it but like c; c: a look-alike of b, close to the query too;
    # d: the instance from another side; e: like d, unlike the query
    vectors = [unit(1, 0, 0), unit(0, 1, 0), unit(0.6, 0.8, 0), unit(0.5, 0, 0.86), unit(0.3, 0, 0.95)]
    images = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    outcome = _outcome(vectors, images, unit(1, 0, 0))
    keys = {0: "a.jpg", 2: "c.jpg", 4: "e.jpg"}
    plain = feedback_ranking(outcome, [], [], keys)
    assert set(plain) == set(keys) and plain[0].score == pytest.approx(1.0)
    assert plain[2].score == pytest.approx(0.6) and plain[4].box == Box(40, 0, 10, 10)
    rejected_b = feedback_ranking(outcome, [], [("b.jpg", Box(10, 0, 10, 10))], keys)
    assert rejected_b[2].score < plain[2].score  # c looks like the rejected b
    assert rejected_b[0].score == pytest.approx(plain[0].score)  # a does not
    accepted_d = feedback_ranking(outcome, [("d.jpg", Box(31, 1, 10, 10))], [], keys)  # an adjusted box
    assert accepted_d[4].score > plain[4].score + 0.3  # e looks like the accepted d
    assert accepted_d[0].score == pytest.approx(plain[0].score)
