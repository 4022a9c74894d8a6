""""Find photos like this one" in the real window: no box drawn, the hits are whole photos of the
same scene, nothing is labelled until the user accepts."""
from __future__ import annotations

from PySide6.QtCore import Qt

from dasr_annotator.app.gui.document import PENDING
from dasr_annotator.engine.store.imageio import image_size
from tests.test_gui_flow import (INDEX_TIMEOUT_MS, fresh_copy, indexed_folder, one_thread, press,  # noqa: F401
                                 wait_for_image, window_on)


def test_find_photos_like_this_one_from_the_keyboard(qtbot, tmp_path, indexed_folder, window_on):  # noqa: F811
    photos, truth = fresh_copy(indexed_folder, tmp_path)
    window = window_on(photos)
    qtbot.waitSignal(window.controller.indexingFinished, timeout=INDEX_TIMEOUT_MS).wait()
    query = sorted(f for f in truth if f.startswith("Dog/"))[0]
    wait_for_image(qtbot, window, query)
    assert window.action["find_photos_like"].isEnabled() and window.review.draft is None
    with qtbot.waitSignal(window.controller.searchFinished, timeout=60_000) as finished:
        press(qtbot, window, Qt.Key_P, Qt.ControlModifier | Qt.ShiftModifier)
    outcome = finished.args[0]
    assert outcome.request.whole_image
    # its hits are whole photos: no coarse-to-fine box refinement starts for them
    assert not outcome.examples and outcome.windows is None and not window.controller.is_refining
    images = [h.image for h in outcome.hits]
    assert query not in images
    assert set(images[:2]) == {f for f in truth if f.startswith("Dog/") and f != query}
    for hit in outcome.hits:
        width, height = image_size(photos / hit.image)
        assert hit.box.as_list() == [0.0, 0.0, float(width), float(height)]
    session = window.document.hits
    assert [e.image for e in session.entries] == images and all(e.status == PENDING for e in session.entries)
    assert window.document.annotations() == []  # nothing labelled from it
