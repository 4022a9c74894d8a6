"""Query and review: the drawn box becomes a search, the controller's hits become the document's
hit session, and the user's decisions (keys, buttons) become document edits. Relevance feedback
re-ranks the undecided hits every few decisions.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QKeySequence, QShortcut

from dasr_annotator.app.gui.controller import PropagateRequest, Propagated, SearchOutcome, SearchRequest
from dasr_annotator.app.gui.document import (
    ACCEPTED, PENDING, PENDING_COLOR, REJECTED, REJECTED_COLOR, Document, HitSession,
)
from dasr_annotator.engine.dasr.relocate import MAX_LOOKS, inscribed_ellipse
from dasr_annotator.engine.search import feedback
from dasr_annotator.engine.search.blend import blended_score
from dasr_annotator.engine.store.imageio import ImageError, image_size
from dasr_annotator.engine.store.video import format_time, split_frame_name
from dasr_annotator.engine.types import Annotation, Box, Ellipse, Hit
from dasr_annotator.widgets.canvas import DRAFT_STYLE, MIN_BOX_SIDE, Overlay
from dasr_annotator.widgets.overlays import BoxStyle
from dasr_annotator.widgets.result_grid import HINT, HitRow

if TYPE_CHECKING:
    from dasr_annotator.app.gui.main_window import MainWindow

CROP_SIDE = 160
QUERY_STYLE = BoxStyle("#ffffff", "query (not a label: Ctrl+Enter keeps it)", dashed=True)
WEAK_SCORE = 0.5  # a query whose best hit scores below this matched nothing distinctive
RERANK_PAUSE_S = 0.6  # after a re-rank moves the selection, keys wait this long (look first)


class Review(QObject):
    def __init__(self, window: "MainWindow"):
        super().__init__(window)
        self.window = window
        self.doc: Document | None = None
        self.draft: Box | None = None  # the box drawn on the current photo, not yet used
        self.decisions = 0  # since the last re-ranking
        self.query: tuple[str, Box, str] | None = None  # (image, box, category) searched, not yet a label
        self._shown: HitSession | None = None  # the review the results strip shows
        self._reranked_at = float("-inf")  # when a re-rank last moved the selection
        w, a = window, window.action
        # Enter belongs to the photo and the results strip only: a window-wide Enter took the key
        # from every editor (a label's category typed in the table ran a search instead, and
        # changed the document under the open editor).
        self._enter = [QShortcut(QKeySequence(k), widget, activated=self.enter, context=Qt.WidgetShortcut)
                       for k in ("Return", "Enter") for widget in (w.canvas, w.results.view)]
        a["find_similar"].triggered.connect(self.find_similar)
        a["find_more"].triggered.connect(self.find_more)
        a["find_photos_like"].triggered.connect(self.find_photos_like)
        a["label_box"].triggered.connect(self.label_draft)
        a["accept"].triggered.connect(lambda: self.decide(ACCEPTED))
        a["reject"].triggered.connect(lambda: self.decide(REJECTED))
        a["next_hit"].triggered.connect(lambda: w.results.move(1))
        a["prev_hit"].triggered.connect(lambda: w.results.move(-1))
        a["accept_above"].triggered.connect(self.accept_above)
        a["propagate"].triggered.connect(self.propagate)
        self._propagate_tip = a["propagate"].toolTip()
        a["rerank"].triggered.connect(lambda: self.rerank(automatic=False))
        # Queued: the search may add a category, which refills the combo box whose line edit is
        # still delivering this key press.
        w.category_box.lineEdit().returnPressed.connect(self._category_entered, Qt.QueuedConnection)
        w.canvas.boxDrawn.connect(self._box_drawn)
        w.canvas.boxTooSmall.connect(self._box_too_small)
        w.canvas.boxEdited.connect(self._box_edited)
        w.results.currentChanged.connect(self._hit_selected)
        w.results.hideLabelledChanged.connect(lambda _: self.refresh_results())
        w.results.thresholdChanged.connect(lambda _: self._threshold_moved())
        w.results.queryChosen.connect(self._query_chosen)
        w.results.model.cropWanted.connect(self._crop_wanted)
        w.controller.searchStarted.connect(lambda what: w.statusBar().showMessage(f"Searching for {what}…"))
        w.controller.searchFinished.connect(self._search_finished)
        w.controller.hitsRelocated.connect(self._relocated)
        w.controller.hitsRefined.connect(self._refined)
        w.controller.propagationProgress.connect(self._propagation_progress)
        w.controller.propagationFinished.connect(self._propagated)
        w.controller.propagationStopped.connect(self._propagation_stopped)
        self._propagation_start = 0.0

    def attach(self, doc: Document | None) -> None:
        self.doc, self.draft, self.decisions, self.query, self._shown = doc, None, 0, None, None
        self.window.results.model.clear_crops()
        self.refresh_results()

    @property
    def outcome(self) -> SearchOutcome | None:
        """The search behind the review on screen (re-ranking needs its regions)."""
        hits = self.doc.hits if self.doc is not None else None
        return hits.outcome if hits is not None else None

    # ---- the drawn box -----------------------------------------------------------------------
    def clear_draft(self) -> None:
        self.draft = None

    def _box_drawn(self, box: Box) -> None:
        self.draft = box
        self.window.refresh_image_views()
        self.window.canvas.select(["draft"])
        self.window.statusBar().showMessage("Enter: find similar · Ctrl+Enter: label it without searching", 6000)

    def _box_too_small(self, box: Box) -> None:
        self.window.show_info(f"That box is {box.w:.0f}×{box.h:.0f} px: too small to search with or to label "
                              f"(at least {MIN_BOX_SIDE} px a side). Zoom in (Ctrl+wheel) to draw small objects.")

    def _box_edited(self, key: str, box: Box, drag_id) -> None:
        if key == "draft":
            self.draft = box
        elif key.startswith("ann:"):
            self.window.edit(lambda d: d.set_annotation_box(key[4:], box, drag_id))
        elif key.startswith("hit:"):
            self.window.edit(lambda d: d.set_hit_box(int(key[4:]), box, drag_id))

    def _category_or_ask(self) -> str | None:
        category = self.window.category()
        if not category:
            self.window.show_error("Which category?", "Type a category name in the toolbar (or press 1–9) first.")
            self.window.category_box.setFocus()
        return category or None

    def label_draft(self) -> str | None:
        """Ctrl+Enter: add the drawn box as a label of the current category, or, with none drawn,
        keep the box the last search was made with; returns the new label's id."""
        if self.doc is None:
            return None
        if self.draft is None:
            if self.query is None:
                self.window.show_info("Draw a box first: Ctrl+Enter adds it as a label.")
                return None
            image, box, category = self.query
            self.query = None
            ann_id = self.doc.add_annotation(image, category, box)
            self.window.show_info(f"The query box is a {category} label now.", 4000)
            return ann_id
        category = self._category_or_ask()
        if category is None:
            return None
        box, self.draft = self.draft, None
        return self.doc.add_annotation(self.window.current_image, category, box)

    # ---- searching ---------------------------------------------------------------------------
    def enter(self) -> None:
        """Enter searches with the drawn box, and does nothing else (Y and N decide hits)."""
        if self.draft is not None:
            self.find_similar()
        elif self.doc is not None:
            self.window.show_info("Enter searches with a drawn box: drag around an object first. "
                                  "Y accepts the selected hit, N rejects it.", 5000)

    def _category_entered(self) -> None:
        """Enter in the category box: search with the drawn box, if any; else back to the photo."""
        if self.draft is not None:
            self.find_similar()
        self.window.canvas.setFocus()

    def find_similar(self) -> None:
        w = self.window
        if self.doc is None or w.current_image is None:
            return
        image = w.current_image
        if self.draft is not None:
            box = self.draft
            category = self._category_or_ask()
            if category is None:
                return
            self.draft = None
            if w.prefs.label_queries:  # the setting: every query box is a label at once
                self.doc.add_annotation(image, category, box)
                self.query = None
            else:
                self.query = (image, box, category)
            w.refresh_image_views()
        else:
            selected = [k[4:] for k in w.canvas.selected_keys() if k.startswith("ann:")]
            if not selected:
                w.show_info("Draw a box around an object first (drag on the photo), or select a label.")
                return
            ann = self.doc.annotation(selected[0])
            box = ann.box
            w.set_category(ann.category)
        self._search(SearchRequest(w.category(), [(image, box)], exclude_image=image, top_k=w.prefs.top_k))

    def find_photos_like(self) -> None:
        """Photos like the whole current photo (whole-image search): no box is drawn, nothing is
        labelled; each hit's box is its whole photo, to accept or reject like any hit."""
        w = self.window
        if self.doc is None or w.current_image is None:
            return
        image = w.current_image
        try:
            width, height = image_size(w.project.path_of(image))
        except (OSError, ImageError) as exc:
            w.show_info(f"{image} cannot be read: {getattr(exc, 'reason', exc)}")
            return
        self._search(SearchRequest(w.category(), [(image, Box(0.0, 0.0, float(width), float(height)))],
                                   exclude_image=image, top_k=w.prefs.top_k, whole_image=True))

    def find_more(self) -> None:
        """Search with every label of the current category as an example."""
        category = self._category_or_ask()
        if category is None or self.doc is None:
            return
        examples = [(a.image, a.box) for a in self.doc.annotations() if a.category == category]
        if self.query is not None and self.query[2] == category and self.query[:2] not in examples:
            examples.append(self.query[:2])  # the box searched with, even before it is a label
        if not examples:
            self.window.show_info(f"There are no {category!r} labels yet: draw one and press Enter.")
            return
        hits = self.doc.hits
        negatives = decided_boxes(hits, REJECTED) if hits is not None and hits.category == category else []
        self._search(SearchRequest(category, examples, negatives, top_k=self.window.prefs.top_k))

    def _search(self, request: SearchRequest) -> None:
        if self.window.controller.is_indexing:
            self.window.show_info("Indexing pauses for this search; photos not indexed yet are left out of it.")
        self.window.controller.search(request)

    def _search_finished(self, outcome: SearchOutcome) -> None:
        w, request = self.window, outcome.request
        if self.doc is None:
            return
        query_id = self.doc.record_query(request.category, request.positives, request.negatives) if request.positives else None
        notes, missing = [], outcome.total_images - outcome.searched_images
        if missing > 0:
            why = "are still being indexed" if w.controller.is_indexing else "are not indexed (indexing was stopped)"
            notes.append(f"Searched the {outcome.searched_images} photos indexed so far; {missing} {why}.")
        best = max((h.score for h in outcome.hits), default=None)
        if best is not None and best < WEAK_SCORE:
            notes.append(f"All hits are weak (best score {best:.2f}): the query box may hold too little of the "
                         "object. Check them closely, or draw a tighter box around a clearer view.")
        self.decisions = 0
        session = HitSession.from_hits(outcome.hits, request.category, query_id, " ".join(notes))
        session.outcome = outcome
        examples = len(request.positives)
        session.title = f"{request.category} · {examples} example{'s' if examples != 1 else ''}"
        self.doc.show_search(session, f"Search for {request.category}")
        if outcome.hits:
            w.results.view.setFocus()
        w.statusBar().showMessage(f"{len(outcome.hits)} hits for {request.category}", 5000)
        if self.query is not None and self.query[0] == (request.positives[0][0] if request.positives else None):
            notes.append(f"The box searched with is not a label: Ctrl+Enter keeps it as a {self.query[2]} label.")
        if notes:  # weak hits stay on screen until dismissed: they need the annotator's eyes
            w.show_info(" ".join(notes), 0 if best is not None and best < WEAK_SCORE else 10000)
        self.refine_pending()

    def refine_pending(self, keys=None) -> None:
        """Refine the boxes of the undecided hits (`keys`: these only), in the order shown
        (controller.refine); accepted boxes serve as further examples, rejected ones are avoided."""
        hits = self.doc.hits if self.doc is not None else None
        if hits is None or self.outcome is None:
            return
        if not self.outcome.examples or self.outcome.windows is None:
            return  # a whole-image search: its hits are whole photos, no box to refine
        order = {row.key: i for i, row in enumerate(self.window.results.model.rows())}
        pending = sorted((e for e in hits.entries if e.status == PENDING and (keys is None or e.key in keys)),
                         key=lambda e: order.get(e.key, len(order)))
        boxes_rejected, _ = rejected_boxes(hits)
        self.window.controller.refine(hits, self.outcome.examples, self.outcome.windows,
                                      {e.key: e.hit for e in pending}, decided_boxes(hits, ACCEPTED), boxes_rejected)

    def _refined(self, result) -> None:
        """A chunk of refined boxes (controller.refine): undecided hits the user has not adjusted
        take them; the status bar says how far refinement is. Once every hit is refined, the
        undecided ones are re-ordered by region and box score together (refine.rank_by_box, as
        `search` orders them): a hit whose box matches the query poorly moves down."""
        hits = self.doc.hits if self.doc is not None else None
        if hits is None or hits is not result.session:
            return  # a newer search replaced those hits
        self.doc.move_pending_boxes(result.boxes)
        if not result.complete:
            if result.done < result.total:
                self.window.statusBar().showMessage(f"Refined boxes: {result.done} of {result.total}", 3000)
            else:  # every hit has its box; second looks (refine.SECOND_LOOK_BELOW) may still improve a few
                self.window.statusBar().showMessage(  # not left up if the looks are cancelled
                    f"All {result.total} hits have refined boxes; looking again at weak ones", 30000)
            return
        # blended with each hit's region score as it is now: feedback may have re-ranked it meanwhile
        blended = {e.key: blended_score(e.hit.score, result.box_scores[e.key])
                   for e in hits.entries if e.status == PENDING and e.key in result.box_scores}
        if blended:
            current = self.window.results.current_key()
            threshold = self.window.results.threshold()
            worth = sum(e.status == PENDING and e.score >= threshold for e in hits.entries)
            self.doc.order_pending(blended)
            self._keep_share_to_review(hits, worth)
            if current is not None:  # the annotator stays on the hit they were looking at
                self.window.results.select_key(current)
        self.window.statusBar().showMessage(f"All {result.total} boxes refined; undecided hits ordered by box match",
                                            4000)

    def _keep_share_to_review(self, hits: HitSession, worth: int) -> None:
        """After re-scoring, the slider spans the new scores and its threshold keeps as many
        undecided hits worth reviewing as before (the scale changed, not the annotator's choice)."""
        scores = [e.score for e in hits.entries]
        pending = sorted((e.score for e in hits.entries if e.status == PENDING), reverse=True)
        if worth >= len(pending):
            threshold = min(scores)
        elif worth == 0:
            threshold = max(scores)
        else:  # between the last hit worth reviewing and the next (the slider moves in steps)
            threshold = (pending[worth - 1] + pending[worth]) / 2
        self.window.results.set_range(min(scores), max(scores), threshold)
        hits.threshold = self.window.results.threshold()

    # ---- propagating to neighbouring video frames ----------------------------------------------
    def propagation_source(self) -> tuple[tuple[str, Box, str] | None, str]:
        """What "Propagate to neighbouring frames" would look for: (frame, box, category) of the
        label (or hit not rejected) selected on the video frame shown, else of its only label; or
        None and why not (the action's tooltip while it is disabled)."""
        w = self.window
        image = w.current_image
        if self.doc is None or image is None:
            return None, "Open a folder and show a video frame first."
        if split_frame_name(image) is None:
            return None, "Only a frame of a video has neighbouring frames: this photo is not from a video."
        hits = self.doc.hits
        keys = w.canvas.selected_keys() if w.canvas_image == image else []
        current = w.results.current_key()
        if current is not None and hits is not None:
            keys = keys + [f"hit:{current}"]
        for key in keys:
            if key.startswith("ann:") and self.doc.has_annotation(key[4:]):
                ann = self.doc.annotation(key[4:])
                return (image, ann.box, ann.category), ""
            if key.startswith("hit:") and hits is not None:
                try:
                    entry = hits.entry(int(key[4:]))
                except KeyError:
                    continue
                if entry.image == image and entry.status != REJECTED:
                    return (image, entry.box, hits.category), ""
        labels = self.doc.annotations(image)
        if len(labels) == 1:
            return (image, labels[0].box, labels[0].category), ""
        if labels:
            return None, "This frame has several labels: select the one to propagate (click its box)."
        return None, "Label a box on this video frame first (or select a hit on it): that box is propagated."

    def update_propagate(self) -> None:
        source, why = self.propagation_source()
        action = self.window.action["propagate"]
        action.setEnabled(source is not None)
        action.setToolTip(self._propagate_tip if source is not None else why)
        action.setStatusTip(action.toolTip())

    def propagate(self) -> None:
        """Look for the selected label (or hit) of the video frame shown in the frames around it
        (controller.propagate); the proposals come back as hits to review."""
        w = self.window
        source, why = self.propagation_source()
        if source is None:
            w.show_info(why)
            return
        image, box, category = source
        w.set_category(category)
        self._propagation_start = time.monotonic()
        w.progress.start("Propagating to neighbouring frames…", cancel_tip="Stop propagating (nothing is labelled)")
        w.controller.propagate(PropagateRequest(category, image, box, w.prefs.propagate_seconds, w.prefs.propagate_fps))

    def _propagation_progress(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self._propagation_start
        eta = (total - done) * elapsed / done if done else -1.0
        self.window.progress.set_progress("Propagating to neighbouring frames", done, total, eta)

    def _propagation_stopped(self) -> None:
        if not self.window.controller.is_propagating:
            self.window.progress.finish("Propagation stopped")

    def _propagated(self, result: Propagated) -> None:
        w, request = self.window, result.request
        w.progress.finish(f"Propagated to {len(result.hits)} frame{'s' if len(result.hits) != 1 else ''}")
        if self.doc is None:
            return
        w.add_video_frames(result.frame_times)
        span = f"±{request.seconds:g} s at {request.fps:g} frames per second"
        if not result.hits:
            w.show_info(f"No neighbouring frames to look in ({span} around {format_time(result.time)}).")
            return
        query_id = self.doc.record_query(request.category, [(request.image, request.box)])
        note = (f"Proposals in the frames {span} around {format_time(result.time)}, nearest in time first: "
                "accept (Y) the right ones; nothing is labelled until accepted.")
        self.decisions = 0
        session = HitSession.from_hits(result.hits, request.category, query_id, note)
        session.title = f"{request.category} · frames around {format_time(result.time)}"
        # every frame around the label is worth a look: none starts below the threshold
        session.threshold = min(e.score for e in session.entries)
        self.doc.show_search(session, f"Propagate {request.category}")
        w.results.view.setFocus()
        w.statusBar().showMessage(f"{len(result.hits)} neighbouring frames to review for {request.category}", 5000)

    # ---- deciding ----------------------------------------------------------------------------
    def _current_entries(self) -> list:
        hits = self.doc.hits if self.doc is not None else None
        if hits is None:
            return []
        keys = set(self.window.results.selected_keys())
        return [e for e in hits.entries if e.key in keys]

    def decide(self, decision: str) -> None:
        entries = self._current_entries()
        if not entries:
            return
        if time.monotonic() - self._reranked_at < RERANK_PAUSE_S:
            # The list was just re-ordered under the annotator's finger: this key press was
            # meant for the hit they saw before, not for the one now selected.
            row = self.window.results.model.row_of(entries[0].key)
            self.window.statusBar().showMessage(f"Re-ranked: hit #{row + 1} is the best undecided one now. "
                                                "Look, then decide.", 4000)
            return
        last = self.window.results.model.row_of(entries[-1].key)
        self.window.edit(lambda d: d.decide_hits([e.key for e in entries], decision))
        self.decisions += len(entries)
        self._advance(last)
        every = self.window.prefs.feedback_every
        if every and self.decisions >= every:
            self.rerank(automatic=True)

    def _advance(self, after_row: int) -> None:
        """Select the next undecided hit after `after_row` (or the last one)."""
        rows = self.window.results.model.rows()
        following = [r for r in rows[after_row + 1:] if r.status == PENDING]
        target = following[0] if following else (rows[min(after_row + 1, len(rows) - 1)] if rows else None)
        if target is not None:
            self.window.results.select_key(target.key)

    def accept_above(self) -> None:
        if self.doc is None:
            return
        threshold = self.window.results.threshold()
        count = self.doc.accept_all_above(threshold)
        self.window.statusBar().showMessage(f"Accepted {count} hits scoring {threshold:.3f} or more", 5000)

    def rerank(self, automatic: bool) -> None:
        """Re-order the undecided hits with the accepted ones as more examples and the rejected
        ones as counter-examples (numpy over the hit images' regions: instant, no engine)."""
        hits = self.doc.hits if self.doc is not None else None
        if hits is None or hits.outcome is None:
            return
        pending = {e.key: e.image for e in hits.entries if e.status == PENDING}
        decided = [e for e in hits.entries if e.status != PENDING]
        if not pending or (automatic and not decided):
            return
        self.decisions = 0
        accepted, rejected = decided_boxes(hits, ACCEPTED), decided_boxes(hits, REJECTED)
        updates = feedback_ranking(self.outcome, accepted, rejected, pending)
        # feedback re-orders the hits; each keeps the box search placed (re-localised, engine/relocate.py)
        placed = {e.key: e.hit for e in hits.entries}
        updates = {key: Hit(hit.image, hit.score, placed[key].box, placed[key].ellipse) for key, hit in updates.items()}
        current = self.window.results.current_key()
        self.doc.rerank_hits(updates)
        self.window.show_info(f"Re-ranked the {len(updates)} undecided hits using {len(accepted)} accepted and "
                              f"{len(rejected)} rejected as examples.", 5000)
        best = self.best_undecided()
        if best is not None:  # the review goes on at the best undecided hit, wherever it moved
            self.window.results.select_key(best)
            if automatic and best != current:
                self._reranked_at = time.monotonic()
        if accepted and self.outcome.windows is not None:  # the accepted boxes also place the rest
            waiting = {e.key: e.hit for e in hits.entries if e.status == PENDING}
            boxes_rejected, look_again = rejected_boxes(hits)
            self.window.controller.relocate(hits, self.outcome.windows, accepted, waiting, boxes_rejected, look_again)

    def _relocated(self, result) -> None:
        """Boxes of undecided hits moved by the accepted examples, and rejected photos with a new
        box to review (controller.relocate)."""
        hits = self.doc.hits if self.doc is not None else None
        if hits is None or hits is not result.session:
            return  # a newer search replaced those hits
        refining = bool(self.outcome is not None and self.outcome.examples)
        # with refinement the coarse boxes would replace finer ones only to be refined again:
        # the undecided hits are refined with the accepted examples instead (below)
        moved = 0 if refining else self.doc.move_pending_boxes(result.boxes)
        again = 0
        current = self.window.results.current_key()
        at_best = current is not None and current == self.best_undecided()
        if result.second_looks and hits.outcome is not None:
            accepted, rejected = decided_boxes(hits, ACCEPTED), decided_boxes(hits, REJECTED)
            images = list(result.second_looks)
            scored = feedback_ranking(self.outcome, accepted, rejected, dict(enumerate(images)))
            again = self.doc.add_second_looks(
                [Hit(image, scored[i].score, box, inscribed_ellipse(box))
                 for i, (image, box) in enumerate(result.second_looks.items()) if i in scored])
            best = self.best_undecided()
            if again and at_best and best != current:  # a new look ranks above: the review goes on there
                self.window.results.select_key(best)
                self._reranked_at = time.monotonic()
        parts = []
        if moved:
            parts.append(f"Moved {moved} hit box{'es' if moved != 1 else ''} to match the accepted ones.")
        if again:
            parts.append(f"{again} rejected photo{'s have' if again != 1 else ' has'} a new box to review.")
        if parts:
            self.window.show_info(" ".join(parts), 5000)
        if refining:
            self.refine_pending()

    # ---- views -------------------------------------------------------------------------------
    def _hit_selected(self, key) -> None:
        if key is None or self.doc is None or self.doc.hits is None:
            return
        entry = self.doc.hits.entry(key)
        if entry.image != self.window.current_image:
            self.window.show_image(entry.image)  # selected on the canvas once it is shown
        else:
            self.window.refresh_image_views()
            self._select_on_canvas(entry)

    def image_shown(self, rel: str) -> None:
        """The canvas shows `rel` now: select the current hit on it, if it lies there."""
        key = self.window.results.current_key()
        if key is not None and self.doc is not None and self.doc.hits is not None:
            entry = self.doc.hits.entry(key)
            if entry.image == rel:
                self._select_on_canvas(entry)

    def _select_on_canvas(self, entry) -> None:
        key = f"ann:{entry.annotation_id}" if entry.status == ACCEPTED else f"hit:{entry.key}"
        self.window.canvas.select([key], center=True)

    def canvas_selected(self, keys: list[str]) -> None:
        self.update_propagate()
        if self.doc is None or self.doc.hits is None or len(keys) != 1:
            return
        for entry in self.doc.hits.entries:
            if keys[0] in (f"hit:{entry.key}", f"ann:{entry.annotation_id}"):
                if self.window.results.current_key() != entry.key:
                    self.window.results.select_key(entry.key)
                return

    def _crop_wanted(self, key: int, image: str, box: Box) -> None:  # noqa: ARG002 - tag by image and box
        project = self.window.project
        if project is not None:
            self.window.controller.images_loader.request(("crop", image, box), project.path_of(image), CROP_SIDE, crop=box)

    def best_undecided(self) -> int | None:
        """The key of the first undecided hit in the list as shown (the review's next step)."""
        return next((r.key for r in self.window.results.model.rows() if r.status == PENDING), None)

    def waiting(self) -> list:
        """The undecided hits that mark their photos as waiting for review: those at or above
        the threshold that are not labelled already (the rest of a long ranked list is noise)."""
        hits = self.doc.hits if self.doc is not None else None
        if hits is None:
            return []
        threshold = self.window.results.threshold()
        labelled = self.doc.labelled_hit_keys(self.window.prefs.overlap_iou)
        return [e for e in hits.entries if e.status == PENDING and e.score >= threshold and e.key not in labelled]

    def overlays(self, image: str, annotations: list[Annotation], colors: dict[str, str]) -> list[Overlay]:
        """What the canvas shows on `image`: labels, this image's hits (the current one, and the
        undecided ones that wait for review), the drawn box and the unconfirmed query box."""
        current = self.window.results.current_key()
        hits = self.doc.hits if self.doc is not None else None
        waiting = {e.key for e in self.waiting()}
        ellipses = {}
        out = []
        if hits is not None:
            for entry in hits.entries:
                if entry.image != image:
                    continue
                is_current = entry.key == current
                if entry.status == ACCEPTED:
                    if is_current:
                        ellipses[entry.annotation_id] = entry.hit.ellipse
                    continue
                if not is_current and (entry.status == REJECTED or entry.key not in waiting):
                    continue
                color = REJECTED_COLOR if entry.status == REJECTED else PENDING_COLOR
                label = f"{hits.category}? {entry.score:.2f}" + (" (rejected)" if entry.status == REJECTED else "")
                out.append(Overlay(f"hit:{entry.key}", entry.box, BoxStyle(color, label, dashed=True, filled=is_current),
                                   ellipse=entry.hit.ellipse if is_current else None))
        for ann in annotations:
            style = BoxStyle(colors.get(ann.category, "#ffffff"), ann.category)
            out.insert(0, Overlay(f"ann:{ann.id}", ann.box, style, ellipse=ellipses.get(ann.id)))
        if self.query is not None and self.query[0] == image:
            out.append(Overlay("query", self.query[1], QUERY_STYLE, editable=False))
        if self.draft is not None and image == self.window.current_image:
            out.append(Overlay("draft", self.draft, DRAFT_STYLE))
        return out

    def _threshold_moved(self) -> None:
        if self.doc is not None and self.doc.hits is not None:
            self.doc.hits.threshold = self.window.results.threshold()
            self.window.update_file_counts()
            self.window.refresh_image_views()

    def _query_chosen(self, index: int) -> None:
        """Back to an earlier query's review (or forward again), as the annotator left it."""
        if self.doc is not None and 0 <= index < len(self.doc.sessions) and self.doc.sessions[index] is not self.doc.hits:
            self.doc.set_hits(self.doc.sessions[index])

    def _switch_review(self, hits: HitSession | None) -> None:
        """The results strip changes to another review: remember where the annotator was in the
        one they leave, and put them back where they were in the one they return to."""
        w, old = self.window, self._shown
        if old is not None:
            old.position = w.results.current_key()
            old.threshold = w.results.threshold()
        self._shown, self.decisions = hits, 0
        if hits is None or not hits.entries:
            return
        scores = [e.score for e in hits.entries]  # as ranked and shown (re-scoring changes them)
        w.results.set_range(min(scores), max(scores), hits.threshold)
        hits.threshold = w.results.threshold()

    def refresh_results(self) -> None:
        w, hits = self.window, self.doc.hits if self.doc is not None else None
        switched = hits is not self._shown
        if switched:
            self._switch_review(hits)
        sessions = self.doc.sessions if self.doc is not None else []
        w.results.set_queries([self._describe(s) for s in sessions], sessions.index(hits) if hits in sessions else -1)
        if hits is None:
            w.results.set_rows([], HINT)
            self.update_enabled()
            return
        hide = w.results.hide_labelled.isChecked()
        labelled_keys = self.doc.labelled_hit_keys(w.prefs.overlap_iou)
        rows = []
        for rank, entry in enumerate(hits.entries):
            labelled = entry.key in labelled_keys
            if not (hide and labelled):
                rows.append(HitRow(entry.key, entry.image, entry.score, entry.box, entry.status, labelled, rank,
                                   entry.look))
        counts = hits.counts()
        parts = [f"<b>{hits.category}</b>: {len(hits.entries)} hits", f"{counts[ACCEPTED]} accepted",
                 f"{counts[REJECTED]} rejected", f"{counts[PENDING]} to review"]
        if len(rows) < len(hits.entries):
            parts.append(f"{len(hits.entries) - len(rows)} labelled already (hidden)")
        if hits.reranked:
            parts.append(f"re-ranked {hits.reranked}× by feedback")
        summary = " · ".join(parts) + (f"<br>{hits.note}" if hits.note else "")
        w.results.set_rows(rows, summary)
        if switched and rows:
            keys = {r.key for r in rows}
            target = hits.position if hits.position in keys else self.best_undecided()
            w.results.select_key(target if target is not None else rows[0].key)
        self.update_enabled()

    @staticmethod
    def _describe(session: HitSession) -> str:
        counts = session.counts()
        return (f"{session.title or session.category}: {counts[ACCEPTED]} ✓ {counts[REJECTED]} ✗ "
                f"{counts[PENDING]} to review")

    def update_enabled(self) -> None:
        has_hits = bool(self.doc is not None and self.doc.hits is not None and self.doc.hits.entries)
        for name in ("accept", "reject", "next_hit", "prev_hit", "accept_above", "rerank"):
            self.window.action[name].setEnabled(has_hits)
        self.window.action["find_similar"].setEnabled(self.doc is not None)
        self.window.action["find_photos_like"].setEnabled(self.doc is not None)
        self.update_propagate()


def decided_boxes(hits: HitSession, status: str) -> list[tuple[str, Box]]:
    """(image, box) of the hits with `status`, in list order: feedback's examples."""
    return [(e.image, e.box) for e in hits.entries if e.status == status]


def rejected_boxes(hits: HitSession) -> tuple[dict[str, list[Box]], list[str]]:
    """The boxes rejected in each photo (feedback never puts a box there again), and the photos
    to look at again: every hit there rejected, fewer than MAX_LOOKS times (relocate.second_look)."""
    boxes: dict[str, list[Box]] = {}
    for entry in hits.entries:
        if entry.status == REJECTED:
            boxes.setdefault(entry.image, []).append(entry.box)
    open_images = {e.image for e in hits.entries if e.status != REJECTED}
    again = [image for image, rejected in boxes.items() if image not in open_images and len(rejected) < MAX_LOOKS]
    return boxes, again


def feedback_ranking(outcome: SearchOutcome, accepted: list[tuple[str, Box]], rejected: list[tuple[str, Box]],
                     candidates: dict[int, str]) -> dict[int, Hit]:
    """New best region and score of each candidate hit (key -> image): positives are the query
    and the accepted hits' regions, negatives the rejected hits' regions (engine/feedback.py)."""
    regions = outcome.regions
    images = np.array(regions.images, dtype=object)

    def rows(pairs):
        found = []
        for image, box in pairs:
            mine = np.flatnonzero(images == image)
            if len(mine):  # the region the hit was drawn from (nearest box, if it was adjusted)
                found.append(mine[np.abs(regions.boxes[mine] - np.array(box.as_list())).sum(1).argmin()])
        return regions.vectors[np.array(found, dtype=np.int64)]

    positives = np.concatenate([outcome.query, rows(accepted)])
    scores = feedback.feedback_scores(positives, rows(rejected), regions.vectors)
    names, image_of_row = np.unique(images.astype(str), return_inverse=True)
    ranked, best, image_scores = feedback.image_ranking(scores, image_of_row)
    key_of = {image: key for key, image in candidates.items()}
    updates = {}
    for image, row, score in zip(ranked.tolist(), best.tolist(), image_scores.tolist()):
        key = key_of.get(str(names[image]))
        if key is not None:
            cx, cy, a, b, angle = (float(v) for v in regions.ellipses[row])
            updates[key] = Hit(str(names[image]), float(score), Box(*map(float, regions.boxes[row])),
                               Ellipse(cx, cy, a, b, angle))
    return updates
