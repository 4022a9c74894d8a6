"""The annotation document: every edit undoable, drags merged, hits decided, autosaved."""
import json

import pytest

from dasr_annotator.app.gui.document import ACCEPTED, PENDING, REJECTED, Document, HitSession
from dasr_annotator.engine.store.annotations import AnnotationStore
from dasr_annotator.engine.types import Box, Ellipse, Hit


@pytest.fixture
def doc(qapp, tmp_path):
    document = Document(AnnotationStore(tmp_path / "labels.json"), autosave_ms=10)
    yield document
    document.deleteLater()


def _hits(*scores, image_prefix="img"):
    return [Hit(f"{image_prefix}{i}.jpg", s, Box(10 * i, 5, 20, 30), Ellipse(10 * i + 10, 20, 12, 8, 0.0))
            for i, s in enumerate(scores)]


def _boxes(doc, image=None):
    return [(a.image, a.category, a.box) for a in doc.annotations(image)]


def test_add_and_remove_are_undoable(doc):
    ann_id = doc.add_annotation("a.jpg", "cup", Box(1, 2, 3, 4))
    assert _boxes(doc) == [("a.jpg", "cup", Box(1, 2, 3, 4))]
    assert [c.name for c in doc.categories] == ["cup"]
    doc.remove_annotations([ann_id])
    assert _boxes(doc) == []
    doc.undo_stack.undo()
    assert doc.annotation(ann_id).box == Box(1, 2, 3, 4)
    doc.undo_stack.undo()
    assert _boxes(doc) == [] and doc.categories == []  # the category the add created goes too
    doc.undo_stack.redo()
    doc.undo_stack.redo()
    assert _boxes(doc) == []
    doc.undo_stack.undo()
    assert doc.has_annotation(ann_id)  # restored under the same id


def test_a_drag_is_one_undo_step(doc):
    ann_id = doc.add_annotation("a.jpg", "cup", Box(0, 0, 10, 10))
    for step in range(1, 6):
        doc.set_annotation_box(ann_id, Box(step, step, 10, 10), drag_id="drag-1")
    doc.set_annotation_box(ann_id, Box(9, 9, 10, 10), drag_id="drag-2")
    assert doc.undo_stack.count() == 3  # add, drag 1, drag 2
    doc.undo_stack.undo()
    assert doc.annotation(ann_id).box == Box(5, 5, 10, 10)
    doc.undo_stack.undo()
    assert doc.annotation(ann_id).box == Box(0, 0, 10, 10)


def test_moves_without_a_drag_id_stay_separate(doc):
    ann_id = doc.add_annotation("a.jpg", "cup", Box(0, 0, 10, 10))
    doc.set_annotation_box(ann_id, Box(1, 0, 10, 10))
    doc.set_annotation_box(ann_id, Box(2, 0, 10, 10))
    assert doc.undo_stack.count() == 3


def test_category_edits_round_trip(doc):
    doc.add_category("cup", "#112233")
    ann_id = doc.add_annotation("a.jpg", "cup", Box(0, 0, 5, 5))
    doc.rename_category("cup", "mug")
    assert doc.annotation(ann_id).category == "mug"
    doc.set_category_color("mug", "#445566")
    assert doc.category_color("mug") == "#445566"
    doc.remove_category("mug")
    assert doc.categories == [] and not doc.has_annotation(ann_id)
    doc.undo_stack.undo()
    assert doc.annotation(ann_id).category == "mug" and doc.category_color("mug") == "#445566"
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    assert doc.annotation(ann_id).category == "cup" and doc.category_color("cup") == "#112233"
    with pytest.raises(ValueError):
        doc.rename_category("cup", " ")


def test_change_annotation_category(doc):
    first = doc.add_annotation("a.jpg", "cup", Box(0, 0, 5, 5))
    doc.set_annotation_category([first], "mug")
    assert doc.annotation(first).category == "mug"
    doc.undo_stack.undo()
    assert doc.annotation(first).category == "cup" and not doc.has_category("mug")


def test_accept_reject_and_undo_hits(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.7, 0.4), "cup", query_id="q1"))
    keys = [e.key for e in doc.hits.entries]
    doc.decide_hits([keys[0]], ACCEPTED)
    accepted = doc.hits.entry(keys[0])
    assert accepted.status == ACCEPTED
    ann = doc.annotation(accepted.annotation_id)
    assert (ann.image, ann.category, ann.source, ann.query_id) == ("img0.jpg", "cup", "search", "q1")
    assert ann.score == pytest.approx(0.9)
    doc.decide_hits([keys[0]], REJECTED)  # changing one's mind removes the annotation
    assert accepted.status == REJECTED and doc.annotations() == []
    doc.undo_stack.undo()
    assert accepted.status == ACCEPTED and doc.has_annotation(accepted.annotation_id)
    doc.undo_stack.undo()
    assert accepted.status == PENDING and doc.annotations() == []
    doc.undo_stack.redo()
    assert doc.annotation(accepted.annotation_id).id == ann.id  # redo recreates the same id


def test_accept_all_above_is_one_step(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.7, 0.4), "cup"))
    assert doc.accept_all_above(0.5) == 2
    assert [e.status for e in doc.hits.entries] == [ACCEPTED, ACCEPTED, PENDING]
    doc.undo_stack.undo()
    assert [e.status for e in doc.hits.entries] == [PENDING] * 3 and doc.annotations() == []


def test_adjusting_a_hit_before_and_after_accepting(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9), "cup"))
    entry = doc.hits.entries[0]
    for dx in range(3):
        doc.set_hit_box(entry.key, Box(dx, 0, 20, 30), drag_id="d")
    assert entry.box == Box(2, 0, 20, 30)
    doc.decide_hits([entry.key], ACCEPTED)
    assert doc.annotation(entry.annotation_id).box == Box(2, 0, 20, 30)
    doc.set_hit_box(entry.key, Box(7, 7, 20, 30))
    assert doc.annotation(entry.annotation_id).box == Box(7, 7, 20, 30) == entry.box
    doc.undo_stack.undo()
    assert entry.box == Box(2, 0, 20, 30)
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    assert entry.box == Box(0, 5, 20, 30) and entry.status == PENDING


def test_deleting_an_accepted_annotation_returns_its_hit_to_pending(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9), "cup"))
    entry = doc.hits.entries[0]
    doc.decide_hits([entry.key], ACCEPTED)
    ann_id = entry.annotation_id
    doc.remove_annotations([ann_id])
    assert entry.status == PENDING
    doc.undo_stack.undo()
    assert entry.status == ACCEPTED and entry.annotation_id == ann_id


def test_hits_on_already_labelled_instances_are_reported(doc):
    doc.add_annotation("img0.jpg", "cup", Box(1, 6, 20, 30))
    doc.add_annotation("img1.jpg", "plate", Box(10, 5, 20, 30))
    doc.add_annotation("img2.jpg", "cup", Box(200, 200, 20, 30))
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.8, 0.7), "cup"))
    first, second, third = doc.hits.entries
    assert doc.labelled_hit_keys() == {first.key}  # not: other category, other place
    doc.decide_hits([second.key], ACCEPTED)
    assert doc.labelled_hit_keys() == {first.key}  # its own new label does not count
    doc.decide_hits([first.key], ACCEPTED)
    assert doc.labelled_hit_keys() == set()  # decided: no longer a question


def test_rerank_keeps_decided_hits_first_and_adjusted_boxes(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.8, 0.7, 0.6), "cup"))
    keys = [e.key for e in doc.hits.entries]
    doc.decide_hits([keys[1]], REJECTED)
    doc.set_hit_box(keys[2], Box(1, 1, 5, 5))
    moved = Hit("img0.jpg", 0.1, Box(50, 50, 10, 10), Ellipse(55, 55, 5, 5, 0.0))
    doc.rerank_hits({keys[0]: moved, keys[2]: _hits(0.2)[0], keys[3]: _hits(0.95)[0]})
    assert [e.key for e in doc.hits.entries] == [keys[1], keys[3], keys[2], keys[0]]
    assert doc.hits.entry(keys[0]).box == Box(50, 50, 10, 10)  # follows its new best region
    assert doc.hits.entry(keys[2]).box == Box(1, 1, 5, 5)  # the user's adjustment stays
    assert doc.hits.entry(keys[0]).score == pytest.approx(0.1)
    assert doc.hits.reranked == 1


def test_feedback_moves_only_untouched_pending_boxes(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.8, 0.7, 0.6), "cup"))
    keys = [e.key for e in doc.hits.entries]
    doc.decide_hits([keys[0]], ACCEPTED)
    doc.set_hit_box(keys[1], Box(1, 1, 5, 5))
    changes = []
    doc.changed.connect(changes.append)
    target = {key: Box(100, 100, 40, 20) for key in keys}
    assert doc.move_pending_boxes(target) == 2  # the accepted hit and the adjusted box stay
    assert doc.hits.entry(keys[0]).box == Box(0, 5, 20, 30) and doc.hits.entry(keys[1]).box == Box(1, 1, 5, 5)
    for key in keys[2:]:
        entry = doc.hits.entry(key)
        assert entry.box == entry.hit.box == Box(100, 100, 40, 20)
        assert (entry.hit.ellipse.cx, entry.hit.ellipse.cy, entry.hit.ellipse.a) == (120, 110, 20)
    assert len(changes) == 1 and doc.move_pending_boxes(target) == 0  # nothing left to move


def test_import_becomes_one_undo_step(doc):
    doc.add_category("cup")
    imported = [doc.store.add("a.jpg", "cup", Box(0, 0, 4, 4), source="import"),
                doc.store.add("b.jpg", "plate", Box(1, 1, 4, 4), source="import")]
    doc.adopt_import(imported, {"cup"})
    assert len(doc.annotations()) == 2 and doc.has_category("plate")
    doc.undo_stack.undo()
    assert doc.annotations() == [] and not doc.has_category("plate") and doc.has_category("cup")
    doc.undo_stack.redo()
    assert {a.id for a in doc.annotations()} == {a.id for a in imported}


def test_autosave_writes_the_store(doc, qtbot):
    with qtbot.waitSignal(doc.savedChanged, timeout=2000) as unsaved:
        doc.add_annotation("a.jpg", "cup", Box(1, 2, 3, 4))
    assert unsaved.args == [False] and not doc.is_saved
    with qtbot.waitSignal(doc.savedChanged, timeout=2000) as saved:
        pass
    assert saved.args == [True]
    data = json.loads(doc.store.path.read_text())
    assert [a["box"] for a in data["annotations"]] == [[1.0, 2.0, 3.0, 4.0]]


def test_save_failure_is_reported_not_raised(qapp, tmp_path, qtbot):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    doc = Document(AnnotationStore(blocker / "labels.json"), autosave_ms=10_000)
    doc.add_annotation("a.jpg", "cup", Box(1, 2, 3, 4))
    with qtbot.waitSignal(doc.saveFailed, timeout=1000) as failed:
        assert doc.save() is False
    assert "Could not save" in failed.args[0]
    assert not doc.is_saved


def test_second_looks_join_the_undecided_hits_by_score(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.8, 0.7), "cup"))
    keys = [e.key for e in doc.hits.entries]
    doc.decide_hits([keys[0]], REJECTED)
    doc.decide_hits([keys[1]], ACCEPTED)
    changes = []
    doc.changed.connect(changes.append)
    again = [Hit("img0.jpg", 0.75, Box(60, 60, 10, 10), Ellipse(65, 65, 5, 5, 0.0)),
             Hit("img1.jpg", 0.99, Box(1, 1, 2, 2), Ellipse(2, 2, 1, 1, 0.0))]  # img1 was accepted: no look
    assert doc.add_second_looks(again) == 1
    entries = doc.hits.entries
    assert [e.status for e in entries] == [REJECTED, ACCEPTED, PENDING, PENDING]
    new = entries[2]
    assert new.key not in keys and new.image == "img0.jpg" and new.box == Box(60, 60, 10, 10)
    assert new.score == pytest.approx(0.75) and entries[3].key == keys[2]  # 0.75 before 0.7
    assert new.look == 2 and entries[3].look == 1  # the photo's second showing
    assert len(changes) == 1 and doc.undo_stack.count() == 2  # not an edit
    assert doc.add_second_looks(again) == 0  # img0 has an undecided hit now


def test_undoing_or_resetting_a_rejection_withdraws_the_second_look_it_led_to(doc):
    doc.set_hits(HitSession.from_hits(_hits(0.9, 0.8), "cup"))
    first = doc.hits.entries[0]
    doc.decide_hits([first.key], REJECTED)
    look = Hit("img0.jpg", 0.85, Box(60, 60, 10, 10), Ellipse(65, 65, 5, 5, 0.0))
    assert doc.add_second_looks([look]) == 1
    assert [(e.image, e.look) for e in doc.hits.entries if e.status == PENDING] == [("img0.jpg", 2), ("img1.jpg", 1)]
    doc.undo_stack.undo()  # the rejection goes: so does the look that came from it
    assert [(e.image, e.look, e.status) for e in doc.hits.entries] == [("img0.jpg", 1, PENDING), ("img1.jpg", 1, PENDING)]
    doc.undo_stack.redo()
    assert doc.add_second_looks([look]) == 1
    doc.decide_hits([first.key], PENDING)  # reset by hand: the same
    assert [e.look for e in doc.hits.entries if e.image == "img0.jpg"] == [1]
    # a look the user already decided is theirs: it stays
    doc.decide_hits([first.key], REJECTED)
    assert doc.add_second_looks([look]) == 1
    second = next(e for e in doc.hits.entries if e.look == 2)
    doc.decide_hits([second.key], ACCEPTED)
    doc.decide_hits([first.key], PENDING)
    assert {(e.look, e.status) for e in doc.hits.entries if e.image == "img0.jpg"} == {(1, PENDING), (2, ACCEPTED)}
