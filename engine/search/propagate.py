"""Propagating a labelled box in a video frame to the frames around it, on request.

Indexing samples a video sparsely (1 fps by default). To densify labels around a hit, the frames
within `seconds` of the labelled one are sampled finer (`fps`, every frame at most) and the box is
looked for in each with the same window search that re-localises hits (engine/dasr/relocate.py):
the labelled box's window query against each frame's relocation map, then, as search hits are,
refined on zoomed crops of the frame (engine/search/refine.py; the score becomes the blend of the
window's and the refined box's similarity, as `search` scores refined hits). Proposals come
nearest in time first; they are proposals only (the caller accepts them as labels or not).
Frames need not be in the index: their maps are computed (and cached) as needed.
"""
from __future__ import annotations

from dasr_annotator.engine.dasr.relocate import best_window, inscribed_ellipse
from dasr_annotator.engine.search.refine import blend_scores
from dasr_annotator.engine.store.imageio import ImageError
from dasr_annotator.engine.store.video import frame_name, probe_video, split_frame_name
from dasr_annotator.engine.types import Box, CancelFn, Cancelled, Hit, ProgressFn, never_cancel, no_progress

DEFAULT_SECONDS = 2.0
DEFAULT_FPS = 10.0


def neighbour_frames(info, frame: int, seconds: float, fps: float) -> list[int]:
    """Frames within `seconds` of `frame` sampled at `fps`, nearest in time first (`frame` left out)."""
    centre = info.time_of(frame)
    picked = {f for f in info.sample(fps) if abs(info.time_of(f) - centre) <= seconds + 1e-9}
    picked.discard(frame)
    return sorted(picked, key=lambda f: (abs(info.time_of(f) - centre), f))


def propagate(searcher, image: str, box: Box, seconds: float = DEFAULT_SECONDS, fps: float = DEFAULT_FPS,
              progress: ProgressFn = no_progress, cancel: CancelFn = never_cancel, refine: bool = True) -> list[Hit]:
    """Where the instance in `box` of video frame `image` (`clip.mp4#frame=N`) lies in the frames
    around it: one hit per neighbouring frame, nearest in time first; boxes refined unless
    `refine` is false or the searcher cannot (then the score is the window's similarity).
    `progress` counts the frames looked at, then the refinement (its second looks included) in
    as many steps, never past the total. Raises ValueError when `image` is not a video frame or
    the searcher cannot re-localise; ImageError when the frame cannot be read."""
    ref = split_frame_name(image)
    if ref is None:
        raise ValueError(f"{image} is not a video frame (clip.mp4#frame=N)")
    if seconds <= 0 or fps <= 0:
        raise ValueError("propagation needs a positive time span and frame rate")
    _, windows = searcher.query(image, box)
    if windows is None:
        raise ValueError("this index's extractor cannot look for boxes inside frames")
    photos = searcher.project.photos
    info = probe_video(photos / ref.video)
    frames = neighbour_frames(info, ref.frame, seconds, fps)
    refining = refine and searcher.refiner is not None
    total = 2 * len(frames) if refining else len(frames)
    hits = []
    progress(0, total)
    for done, frame in enumerate(frames, start=1):
        if cancel():
            break
        name = frame_name(ref.video, frame)
        try:
            fmap = searcher.maps.get(photos / name)
        except ImageError:  # a damaged stretch of the video: the frames around it still count
            continue
        score, found = best_window(fmap, windows)
        hits.append(Hit(name, float(score), found, inscribed_ellipse(found)))
        progress(done, total)
    if not refining or not hits or cancel():
        return hits
    shown = len(frames)

    def refined(done: int, of: int) -> None:
        # the second half of the bar; on a CPU refinement's total grows when second looks follow
        # the first ones, which would take the bar back: it only moves forwards
        nonlocal shown
        shown = max(shown, len(frames) + done * len(frames) // max(of, 1))
        progress(shown, total)

    try:
        return blend_scores(searcher.refine(hits, [searcher.example(image, box)], windows, cancel=cancel,
                                            progress=refined))
    except Cancelled:
        return hits  # what was found so far, as a cancel during the window search returns
