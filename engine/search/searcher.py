"""Instance search over a project's index: query boxes in, one hit per image out.

A region's score is its cosine similarity to the query (whitened space); with several positive
boxes, or negative ones, it is `feedback.feedback_scores` (best positive, minus a penalty for
looking like a negative), the same scoring the GUI re-ranks with. An image scores as its best
region. The index is searched for more and more regions until enough distinct images are found.

With window queries (`Searcher.query`), each returned hit is then re-localised inside its image
(engine/relocate.py): its box becomes the best query-shaped window on a stride-16 map; rank and
score stay the region's. Without them (or when a hit's image can no longer be read) the hit is
drawn as its best region, as DASR* has it.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from dasr_annotator.engine.dasr.descriptors import Whitening
from dasr_annotator.engine.dasr.relocate import (MAX_FEEDBACK_WINDOWS, WindowQuery, best_window,
                                                 inscribed_ellipse, second_look, window_query)
from dasr_annotator.engine.search import image_search
from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search.feedback import feedback_scores, image_ranking
from dasr_annotator.engine.search.map_cache import MapCache
from dasr_annotator.engine.search.refine import Example, Refiner, rank_by_box
from dasr_annotator.engine.search.region_table import ClampedBoxes, RegionTable
from dasr_annotator.engine.store.imageio import ImageError, load_image
from dasr_annotator.engine.store.video import media_file
from dasr_annotator.engine.types import MIN_BOX_SIDE, Box, Ellipse, Hit

log = logging.getLogger(__name__)


class BoxError(ValueError):
    """A query box that cannot be used (zero area, outside the image, not numbers)."""


def parse_box(text: str) -> Box:
    """"X,Y,W,H" -> Box, with a message a person can act on."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BoxError(f"box {text!r} must be four numbers X,Y,W,H") from None
    if len(values) != 4:
        raise BoxError(f"box {text!r} must be four numbers X,Y,W,H")
    return Box(*values)


def checked_box(box: Box, width: int, height: int) -> Box:
    """`box` clipped to a width x height image; refuses boxes with no area inside it."""
    values = box.as_list()
    if not all(math.isfinite(v) for v in values):
        raise BoxError(f"box {values} contains a value that is not a finite number")
    if box.w <= 0 or box.h <= 0:
        raise BoxError(f"box {_fmt(box)} has zero area (width and height must be positive)")
    inside = box.clipped(width, height)
    if inside.w <= 0 or inside.h <= 0:
        raise BoxError(f"box {_fmt(box)} lies outside the image ({width} x {height} pixels)")
    if inside.w < MIN_BOX_SIDE or inside.h < MIN_BOX_SIDE:
        raise BoxError(f"box {_fmt(box)} is less than {MIN_BOX_SIDE:g} pixel wide or high inside the image "
                       f"({width} x {height} pixels)")
    return inside


def _fmt(box: Box) -> str:
    return ",".join(f"{v:g}" for v in box.as_list())


class Searcher:
    """Search one project's index; holds the model, the index and the whitening for many queries."""

    def __init__(self, project, extractor, index, meta: dict | RegionTable, whitening: Whitening | None):
        """`meta`: the region table (search/region_table.py), memory-mapped as `Project.searcher`
        opens it, or in-memory arrays (keys images, sizes, image, boxes, ellipses)."""
        self.project = project
        self.extractor = extractor
        self.index = index
        self.whitening = whitening
        # nothing is copied or converted here: a mapped table stays on disk until rows are read
        self.table = meta if isinstance(meta, RegionTable) else RegionTable.from_arrays(meta)
        self.images = self.table.names  # a sequence of names: images[i], len, `in`; .id_of(name)
        self.sizes = self.table.sizes
        self.region_image = self.table.image
        self.boxes = ClampedBoxes(self.table)  # boxes[rows]: float64, at least a pixel (boxes_of)
        self.ellipses = self.table.ellipses
        # relocation maps live beside the index (computed on first use, or while indexing);
        # an extractor without a relocation layer (test doubles) leaves hits as their regions
        self.maps = (MapCache(self._compute_map, extractor.relocation_config(), getattr(project, "state_dir", None))
                     if hasattr(extractor, "relocation_config") else None)
        # coarse-to-fine boxes (search/refine.py) need the network itself, not only its maps
        self.refiner = Refiner(extractor) if self.maps is not None and hasattr(extractor, "backbone") else None
        self._whole_image: WholeImageSearch | None = None

    def _compute_map(self, path: Path):
        return self.extractor.relocation_map(load_image(path, max_side=self.extractor.max_side))

    @property
    def n_regions(self) -> int:
        return int(self.index.ntotal)

    def region_rows(self, images) -> np.ndarray:
        """The index rows of every region of `images` (names; unknown ones ignored), in row order:
        one name look-up per image and a binary search for its rows, not a scan of the table."""
        ids = [i for i in map(self.images.id_of, images) if i is not None]
        return self.table.rows_of(ids)

    def prepare(self, descriptors: np.ndarray) -> np.ndarray:
        """Raw (l2) descriptors [Q, D] -> the index's space: whitened when the project has a
        whitening, l2-normalised, float32 contiguous."""
        x = np.asarray(descriptors, np.float32)
        x = x.reshape(-1, x.shape[-1])
        return faiss_index.index_vectors(x, self.whitening, x.shape[1])

    def resolve(self, image: str | os.PathLike) -> tuple[Path, str | None]:
        """(file path, collection-relative path or None) of an image named relative to the photo
        folder or absolutely."""
        p = Path(image)
        path = p if p.is_absolute() else self.project.photos / p
        return path, self.project.relative(path)

    def query_descriptor(self, image: str | os.PathLike, box: Box) -> np.ndarray:
        """Raw (l2, not whitened) descriptor of `box` (original pixels) in `image`; `search`
        whitens it. Raises BoxError for unusable boxes and ImageError for unreadable images."""
        path, _ = self.resolve(image)
        loaded = load_image(path, max_side=self.extractor.max_side)
        return self.extractor.describe_box(loaded, checked_box(box, loaded.width, loaded.height))

    def query(self, image: str | os.PathLike, box: Box) -> tuple[np.ndarray, WindowQuery | None]:
        """`query_descriptor` and the box's window query for re-localising hits, in one pass
        (None when the extractor cannot re-localise)."""
        if self.maps is None:
            return self.query_descriptor(image, box), None
        path, _ = self.resolve(image)
        loaded = load_image(path, max_side=self.extractor.max_side)
        return self.extractor.describe_query(loaded, checked_box(box, loaded.width, loaded.height))

    def search(self, query_descs: np.ndarray, top_k: int = 20, negatives: np.ndarray | None = None,
               exclude_image: str | None = None, windows: WindowQuery | None = None) -> list[Hit]:
        """The `top_k` best images for the positive descriptors `query_descs` [Q, D] (raw, as from
        `query_descriptor`), best first, one hit per image, `exclude_image` left out; with
        `windows` (from `query`), each hit re-localised (module docstring)."""
        n = self.n_regions
        if n == 0 or top_k <= 0:
            return []
        positives = self.prepare(query_descs)
        negs = self.prepare(negatives) if negatives is not None and len(negatives) else None
        excluded = self.images.id_of(exclude_image) if exclude_image else None
        excluded = -1 if excluded is None else excluded
        k = min(n, max(4 * top_k, 64))
        while True:
            with faiss_index.single_thread():
                sims, ids = faiss_index.search_regions(self.index, positives, k, top_k)
            regions, scores = _best_per_region(ids.ravel(), sims.ravel())
            if len(positives) > 1 or negs is not None:
                # every candidate against every example (a candidate one positive missed still
                # has a similarity to it), the same scoring as the GUI's re-ranking
                scores = feedback_scores(positives, negs, faiss_index.reconstruct(self.index, regions))
            images, best, image_scores = image_ranking(scores, np.asarray(self.region_image[regions]))
            keep = images != excluded
            images, best, image_scores = images[keep], best[keep], image_scores[keep]
            if len(images) >= top_k or k >= n:
                break
            k = min(n, 4 * k)
        hits: list[Hit] = []
        rows = regions[best]
        # the table is read a block of hits at a time (one vectorised read, not one per hit); a
        # further block only when photos deleted since indexing were left out of this one
        for start in range(0, len(images), top_k):
            block = slice(start, start + top_k)
            boxes = self.boxes[rows[block]].tolist()
            ellipses = np.asarray(self.ellipses[rows[block]], np.float64).tolist()
            for image, score, box, ellipse in zip(images[block].tolist(), image_scores[block].tolist(), boxes,
                                                  ellipses):
                name = self.images[image]
                if not self.exists(name):
                    continue  # deleted since indexing: never offered (the next index run drops it)
                hits.append(Hit(name, float(score), Box(*box), Ellipse(*ellipse)))
                if len(hits) == top_k:
                    break
            if len(hits) == top_k:
                break
        return self.relocate(hits, windows) if windows is not None else hits

    def exists(self, image: str) -> bool:
        photos = getattr(self.project, "photos", None)
        return photos is None or media_file(Path(photos) / image).is_file()  # a frame exists while its video does

    def feedback_windows(self, windows: WindowQuery, accepted: list[tuple[str, Box]]) -> WindowQuery:
        """`windows` plus the latest accepted (image, box) pairs (at most MAX_FEEDBACK_WINDOWS) as
        further window queries (feedback)."""
        extra = []
        for image, box in accepted[-MAX_FEEDBACK_WINDOWS:]:
            try:
                extra.append(window_query(self.maps.get(self.resolve(image)[0]), box))
            except (OSError, ImageError) as exc:  # unreadable since: it just adds no example
                log.warning("%s: not used as a window example (%s)", image, exc)
        return WindowQuery.stack([windows] + extra)

    def relocate(self, hits: list[Hit], windows: WindowQuery, rejected: dict[str, list[Box]] | None = None
                 ) -> list[Hit]:
        """The same hits, in the same order, with re-localised boxes (module docstring); never onto
        a box `rejected` in the same image (image -> boxes)."""
        if self.maps is None or windows is None:
            return hits
        out = []
        for hit in hits:
            fmap = self._map(hit.image)
            if fmap is None:  # gone or unreadable since indexing: keep the region
                out.append(hit)
                continue
            _, box = best_window(fmap, windows, exclude=(rejected or {}).get(hit.image, ()))
            out.append(Hit(hit.image, hit.score, box, inscribed_ellipse(box)))
        return out

    def second_look(self, image: str, windows: WindowQuery, rejected: list[Box]) -> Box | None:
        """A new box for an image whose hit boxes `rejected` were rejected, once `windows` (with
        feedback examples) point elsewhere in it; None otherwise (relocate.second_look)."""
        fmap = self._map(image) if self.maps is not None else None
        return None if fmap is None else second_look(fmap, windows, rejected)

    def _map(self, image: str):
        try:
            return self.maps.get(self.project.photos / image)
        except (OSError, ImageError) as exc:
            log.warning("%s: not re-localised (%s)", image, exc)
            return None

    def example(self, image: str | os.PathLike, box: Box) -> Example | None:
        """A box described for refining hits (search/refine.py); None when this searcher cannot
        refine. Raises BoxError and ImageError like `query`."""
        if self.refiner is None:
            return None
        path, _ = self.resolve(image)
        from dasr_annotator.engine.store.imageio import image_size

        width, height = image_size(path)
        return self.refiner.example(path, checked_box(box, width, height))

    def refine(self, hits: list[Hit], examples: list[Example], windows: WindowQuery,
               rejected: dict[str, list[Box]] | None = None, **kw) -> list[Hit]:
        """`hits` with coarse-to-fine boxes (`Refiner.refine`; `progress`, `cancel`, `emit` pass
        through); unchanged where this searcher cannot refine."""
        if self.refiner is None or not examples or windows is None:
            return list(hits)
        return self.refiner.refine(hits, examples, windows, self._map, lambda im: self.project.photos / im,
                                   rejected, **kw)

    def search_image(self, image: str | os.PathLike, top_k: int = 20) -> list[Hit]:
        """Photos like the whole of `image` (no box): `WholeImageSearch.search`."""
        if self._whole_image is None:
            self._whole_image = WholeImageSearch(self)
        return self._whole_image.search(image, top_k)

    def search_box(self, image: str | os.PathLike, box: Box, top_k: int = 20, refine: bool = True) -> list[Hit]:
        """One query box -> hits, the query's own image excluded; boxes refined coarse-to-fine
        and the hits ordered by region and box score together (`refine.rank_by_box`) unless
        `refine` is false (then boxes as re-localised on the stored maps, order by region score)."""
        _, rel = self.resolve(image)
        descriptor, windows = self.query(image, box)
        hits = self.search(descriptor[None], top_k, exclude_image=rel, windows=windows)
        if refine and windows is not None and self.refiner is not None:
            hits = rank_by_box(self.refine(hits, [self.example(image, box)], windows))
        return hits


class WholeImageSearch:
    """Photos like a whole query photo (search/image_search.py), each hit's box its whole photo."""

    def __init__(self, searcher: Searcher):
        self.searcher = searcher

    def query_regions(self, image: str | os.PathLike) -> tuple[np.ndarray, str | None]:
        """The query photo's regions in the index's space [Q, d] and its collection name: stored
        ones when it is indexed, else extracted now (one extraction). Raises ImageError."""
        s = self.searcher
        path, rel = s.resolve(image)
        rows = s.region_rows([rel])  # none for a photo from outside the folder (rel None)
        if len(rows):
            return faiss_index.reconstruct(s.index, rows), rel
        regions = s.extractor.extract(load_image(path, max_side=s.extractor.max_side))
        raw = regions.descriptors()
        return (s.prepare(raw) if raw.size else np.zeros((0, s.index.d), np.float32)), rel

    def search(self, image: str | os.PathLike, top_k: int = 20) -> list[Hit]:
        """The `top_k` photos most like the whole of `image`, best first, itself left out."""
        s = self.searcher
        n = s.n_regions
        queries, rel = self.query_regions(image)
        if n == 0 or top_k <= 0 or len(queries) == 0:
            return []
        k = image_search.candidates(n, top_k)
        with faiss_index.single_thread():
            # the index's re-ranking (large collections) as for the candidate photos wanted
            sims, ids = faiss_index.search_regions(s.index, np.ascontiguousarray(queries, np.float32), k,
                                                   image_search.CANDIDATES_PER_HIT * top_k)
        scores = image_search.set_scores(sims, ids, s.region_image, len(s.images), complete=k >= n)
        own = s.images.id_of(rel)
        if own is not None:
            scores[own] = -np.inf
        ranked = [int(i) for i in np.argsort(-scores, kind="stable")[:top_k] if np.isfinite(scores[i])]
        hits = []
        for i in ranked:
            width, height = (float(v) for v in s.sizes[i])
            box = Box(0.0, 0.0, width, height)
            hits.append(Hit(s.images[i], float(scores[i]), box, inscribed_ellipse(box)))
        return hits


def _best_per_region(ids: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique region ids with their best similarity (faiss pads missing results with -1)."""
    valid = ids >= 0
    ids, sims = ids[valid], sims[valid]
    order = np.lexsort((-sims, ids))
    ids, sims = ids[order], sims[order]
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], sims[first].astype(np.float32)
