"""The simulated annotator: reviews re-localised hits one by one with feedback, as the window does."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dasr_annotator.engine.dasr.relocate import (MAX_FEEDBACK_WINDOWS, MAX_LOOKS, WindowQuery, best_window, second_look,
                                                 window_query)
from dasr_annotator.engine.evaluation import metrics as evaluation
from dasr_annotator.engine.evaluation.manifest import Manifest, Query
from dasr_annotator.engine.types import Box

if TYPE_CHECKING:  # the scorer is the runner's; only its type is named here
    from dasr_annotator.engine.evaluation.runner import RegionScorer


class WindowFeedback:
    """A simulated annotator's hits as the GUI shows them with feedback: once hits were accepted,
    their boxes join the window queries and a hit is re-localised when it is reviewed, never onto
    a box already rejected in its image; a rejected image comes back when the windows move off its
    rejected boxes (relocate.second_look), up to MAX_LOOKS hits per image."""

    def __init__(self, manifest, maps, windows: WindowQuery, relevant, gt, image_boxes):
        self.files, self.maps, self.relevant, self.gt = manifest.files, maps, relevant, gt
        self.shown = {i: image_boxes[i] for i in range(len(image_boxes))}  # the box each hit shows
        self.query, self.windows, self.examples = windows, windows, []
        self.rejected: dict[int, list[Box]] = {}

    def found(self, i: int) -> bool:
        if self.examples or i in self.rejected:
            box = best_window(self.maps[self.files[i]], self.windows, exclude=self.rejected.get(i, ()))[1]
            self.shown[i] = box.as_list()
        hit = bool(self.relevant[i] and evaluation.centres_inside([self.shown[i]], [self.gt[i]])[0])
        if not hit:
            self.rejected.setdefault(i, []).append(Box.from_list(self.shown[i]))
        return hit

    def on_accept(self, i: int) -> None:
        example = window_query(self.maps[self.files[i]], Box.from_list(self.shown[i]))
        self.examples = (self.examples + [example])[-MAX_FEEDBACK_WINDOWS:]  # as Searcher.feedback_windows
        self.windows = WindowQuery.stack([self.query] + self.examples)

    def second_looks(self, rejected: list[int]) -> list[int]:
        if not self.examples:
            return []
        return [i for i in rejected if len(self.rejected[i]) < MAX_LOOKS
                and second_look(self.maps[self.files[i]], self.windows, self.rejected[i]) is not None]


def simulated_review(q: Query, manifest: Manifest, scorer: RegionScorer, qvec, settings,
                      image_boxes: np.ndarray | None = None, maps: dict | None = None,
                      windows: WindowQuery | None = None) -> dict:
    """Hits a simulated annotator reviews before 90% of the instance's other images are found,
    on the plain list and with re-ranking from its accept / reject decisions. The regions order
    the hits; `image_boxes` [N, 4], when given, is the box each image's hit shows (re-localised:
    each image is one hit), else a hit is a region and shows itself."""
    files = np.array(manifest.files)
    relevant, gt = manifest.gt_boxes(q.instance, manifest.files)
    owner = scorer.owner
    mine = files[owner] != q.file
    n = int(relevant.sum()) - 1  # the query image is not in the list
    out = {"instance": q.instance, "file": q.file, "occurrences": n,
           "fewest_to_90": int(np.ceil(0.9 * n)),  # each occurrence found is one review: no list does better
           "list_length": len(manifest.files) - 1}
    if image_boxes is not None:  # one box per image: an image is one hit
        found = relevant & evaluation.centres_inside(image_boxes, gt)
    else:
        located = relevant[owner] & evaluation.centres_inside(scorer.boxes, gt[owner])
    for name, hits in (("plain", 0), ("feedback", settings.feedback_hits)):
        if image_boxes is not None:
            found_of, on_accept, second_looks = found, None, None
            if hits and windows is not None:  # accepted boxes also re-localise the rest, as the GUI
                review = WindowFeedback(manifest, maps, windows, relevant, gt, image_boxes)
                found_of, on_accept, second_looks = review.found, review.on_accept, review.second_looks
            seq = evaluation.simulate_image_review(scorer.descriptors[mine], owner[mine], found_of, qvec,
                                                   settings.feedback_batch, hits, on_accept=on_accept,
                                                   second_looks=second_looks)
        else:
            seq = evaluation.simulate_review(scorer.descriptors[mine], owner[mine], located[mine], qvec,
                                             settings.feedback_batch, hits)
        out[name] = {"reviews_to_90": evaluation.hits_to_find(seq, n, 0.9),
                     "found@50": evaluation.recall_at_k(seq, n, 50), "found@100": evaluation.recall_at_k(seq, n, 100)}
    return out


def review_summary(reviews: list[dict], settings) -> dict:
    out = {"batch": settings.feedback_batch, "feedback_hits": settings.feedback_hits, "queries": reviews}
    for name in ("plain", "feedback"):
        to90 = np.array([r[name]["reviews_to_90"] for r in reviews], float)
        reached = to90[np.isfinite(to90)]
        out[name] = {
            "reached_90": float(np.isfinite(to90).mean()) if len(to90) else None,
            "median_reviews_to_90": float(np.median(to90)) if len(to90) else None,  # inf when most never get there
            "mean_reviews_to_90_when_reached": float(reached.mean()) if len(reached) else None,
            # a query that never gets there counted as reviewing every image once
            "mean_reviews_to_90_never_as_all": float(np.mean(np.minimum(to90, [r["list_length"] for r in reviews])))
            if len(to90) else None,
            "found@50": float(np.nanmean([r[name]["found@50"] for r in reviews])) if reviews else None,
            "found@100": float(np.nanmean([r[name]["found@100"] for r in reviews])) if reviews else None,
        }
    # where both lists get there, how far each is from the fewest reviews possible
    both = [r for r in reviews if np.isfinite(r["plain"]["reviews_to_90"]) and np.isfinite(r["feedback"]["reviews_to_90"])]
    out["both_reached"] = {"queries": len(both), **{
        key: float(np.mean(values)) if both else None for key, values in (
            ("plain", [r["plain"]["reviews_to_90"] for r in both]),
            ("feedback", [r["feedback"]["reviews_to_90"] for r in both]),
            ("fewest_possible", [r["fewest_to_90"] for r in both]))}}
    return out
