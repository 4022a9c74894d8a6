"""The region table: what a search needs of each indexed region besides its vector (the photo it
belongs to, its box and ellipse) and of each indexed photo (its collection name and size).

A project's index writes it beside the faiss index as uncompressed `.npy` files, one per column
(`index-<gen>.<column>.npy`, COLUMNS), which the Searcher opens memory-mapped: at the paper's
scale (12.5M regions of ~1M photos) the table is ~0.6 GB on disk, and a search reads only the
pages of the rows it returns. Indexes written before keep the table in one `index-<gen>.npz`,
which is read into memory as it always was (`RegionTable.from_arrays`).

Layout (all little-endian, numpy's `.npy` format, row i of a region column is index row i):
  image         int32 [N]      the photo of each region; non-decreasing (a photo's regions are
                               contiguous rows), so a photo's rows are found by binary search
  boxes         float32 [N, 4] x, y, w, h in the photo's original pixels, as extracted
  ellipses      float32 [N, 5] cx, cy, a, b, angle
  scores        float32 [N]    the detector's score (kept for tools; the Searcher does not map it)
  sizes         int32 [M, 2]   width, height of each photo
  names         uint8 [B]      the photos' collection names, UTF-8 (surrogatepass), concatenated
  name_offsets  int64 [M + 1]  photo i's name is names[name_offsets[i]:name_offsets[i + 1]]
  name_order    int32 [M]      photo ids sorted by their encoded name, for name -> id look-ups
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dasr_annotator.engine.store.storage import ProjectFileError, commit_temp, remove_quietly, temp_beside
from dasr_annotator.engine.types import boxes_at_least

COLUMNS = ("image", "boxes", "ellipses", "scores", "sizes", "names", "name_offsets", "name_order")
MAPPED = tuple(c for c in COLUMNS if c != "scores")  # what a Searcher opens
_ENCODING = ("utf-8", "surrogatepass")  # any Python str, undecodable file names included, round-trips


def table_files(generation: str) -> dict[str, str]:
    """The file name of each column of generation `generation`'s table."""
    return {column: f"index-{generation}.{column}.npy" for column in COLUMNS}


def write_table(folder: Path, files: dict[str, str], names: list[str], sizes: np.ndarray, image: np.ndarray,
                boxes: np.ndarray, ellipses: np.ndarray, scores: np.ndarray) -> None:
    """Write a table's columns to `folder` under `files` (`table_files`): each to a temporary file
    first, then all renamed into place, so a killed write leaves no column half-written (the
    manifest, switched afterwards, is what makes a generation current)."""
    image = np.asarray(image, np.int32)
    if len(image) > 1 and bool((image[1:] < image[:-1]).any()):
        raise ValueError("the region table's rows must be grouped by photo, in photo order")
    encoded = [name.encode(*_ENCODING) for name in names]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    columns = {
        "image": image,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "ellipses": np.asarray(ellipses, np.float32).reshape(-1, 5),
        "scores": np.asarray(scores, np.float32).reshape(-1),
        "sizes": np.asarray(sizes, np.int32).reshape(-1, 2),
        "names": np.frombuffer(b"".join(encoded), np.uint8),
        "name_offsets": offsets,
        "name_order": np.array(sorted(range(len(encoded)), key=encoded.__getitem__), np.int32),
    }
    temps: dict[str, str] = {}
    try:
        for column in COLUMNS:
            path = folder / files[column]
            temps[column] = temp_beside(path)
            try:
                with open(temps[column], "wb") as out:
                    np.save(out, columns[column], allow_pickle=False)
            except OSError as exc:
                raise ProjectFileError(f"cannot save {path}: {exc.strerror or exc}") from exc
        for column in COLUMNS:
            commit_temp(temps.pop(column), folder / files[column])
    finally:
        for name in temps.values():
            remove_quietly(name)


def open_table(folder: Path, files: dict[str, str]) -> "RegionTable":
    """The table written by `write_table`, memory-mapped read-only. Raises ValueError (or OSError)
    when a column is missing, damaged or inconsistent with the others."""
    mapped = {c: np.load(folder / files[c], mmap_mode="r", allow_pickle=False) for c in MAPPED}
    image, boxes, ellipses, sizes = mapped["image"], mapped["boxes"], mapped["ellipses"], mapped["sizes"]
    names, offsets, order = mapped["names"], mapped["name_offsets"], mapped["name_order"]
    n, m = len(image), len(sizes)
    kinds = {"image": "i", "boxes": "f", "ellipses": "f", "sizes": "i", "names": "u", "name_offsets": "i",
             "name_order": "i"}
    shapes = {"image": (n,), "boxes": (n, 4), "ellipses": (n, 5), "sizes": (m, 2), "names": (len(names),),
              "name_offsets": (m + 1,), "name_order": (m,)}
    for column, array in mapped.items():
        if array.dtype.kind != kinds[column] or array.shape != shapes[column]:
            raise ValueError(f"{files[column]}: {array.dtype} {array.shape} is not a region table column")
    # cheap checks that need no pass over the table (the files' sizes were checked against the manifest)
    if offsets[0] != 0 or offsets[-1] != len(names) or (n and (image[0] < 0 or image[-1] >= m)):
        raise ValueError("the region table's columns do not agree")
    return RegionTable(MappedNames(names, offsets, order), sizes, image, boxes, ellipses, grouped=True)


class RegionTable:
    """The columns a Searcher reads (module docstring), memory-mapped or in memory."""

    def __init__(self, names: "Sequence[str]", sizes: np.ndarray, image: np.ndarray, boxes: np.ndarray,
                 ellipses: np.ndarray, grouped: bool):
        self.names = names
        self.sizes = sizes
        self.image = image
        self.boxes = boxes
        self.ellipses = ellipses
        self.grouped = grouped  # rows grouped by photo in photo order: a photo's rows by binary search

    @classmethod
    def from_arrays(cls, meta: dict) -> "RegionTable":
        """A table from in-memory arrays (an `index-<gen>.npz` of an index written before, or a
        benchmark's): keys images, sizes, image, boxes, ellipses."""
        image = np.asarray(meta["image"])
        grouped = len(image) < 2 or not bool((image[1:] < image[:-1]).any())
        return cls(InMemoryNames([str(s) for s in meta["images"]]), np.asarray(meta["sizes"]), image,
                   np.asarray(meta["boxes"]), np.asarray(meta["ellipses"]), grouped)

    def rows_of(self, ids) -> np.ndarray:
        """The rows of the regions of photos `ids`, in row order."""
        ids = np.unique(np.asarray(ids, np.int64))
        if not len(ids):
            return np.zeros(0, np.int64)
        if not self.grouped:
            return np.flatnonzero(np.isin(self.image, ids))
        # in the column's own type: a mixed-type search would convert (copy) the whole column first
        wanted = ids.astype(self.image.dtype)
        starts = np.searchsorted(self.image, wanted, "left")
        ends = np.searchsorted(self.image, wanted, "right")
        counts = ends - starts
        # the concatenated ranges start..end, without a Python loop over the photos
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return (np.repeat(starts, counts) + within).astype(np.int64)

    def boxes_of(self, rows) -> np.ndarray:
        """Boxes of `rows` [.., 4] (float64), each at least a pixel wide and high where its photo is:
        a region of a tiny photo (1 x 1 pixel) can be thinner than a pixel, and no hit may be."""
        rows = np.asarray(rows, np.int64)
        flat = rows.reshape(-1)
        out = boxes_at_least(self.boxes[flat], self.sizes[self.image[flat]])
        return out.reshape(rows.shape + (4,))


class ClampedBoxes:
    """`Searcher.boxes`: indexed like the box column (`boxes[rows]`, `boxes[row]`), each box read
    as `RegionTable.boxes_of` has it; nothing is converted before it is asked for."""

    def __init__(self, table: RegionTable):
        self.table = table

    def __getitem__(self, rows) -> np.ndarray:
        return self.table.boxes_of(rows)


class InMemoryNames(Sequence):
    """Photo names held as a Python list with a name -> id dictionary (an older index's table)."""

    def __init__(self, names: list[str]):
        self._names = names
        self._ids = {name: i for i, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i):
        return self._names[i]

    def __contains__(self, name) -> bool:
        return name in self._ids

    def id_of(self, name: str | None) -> int | None:
        return self._ids.get(name)


class MappedNames(Sequence):
    """Photo names read from the mapped `names` / `name_offsets` / `name_order` columns: a name is
    decoded when asked for, and a name's id is found by binary search over `name_order`, so
    opening a million-photo table builds no list or dictionary of a million strings."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, order: np.ndarray):
        self._blob = blob
        self._offsets = offsets
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    def _encoded(self, i: int) -> bytes:
        return self._blob[int(self._offsets[i]):int(self._offsets[i + 1])].tobytes()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"photo {i} is not in a table of {len(self)} photos")
        return self._encoded(i).decode(*_ENCODING)

    def __contains__(self, name) -> bool:
        return self.id_of(name) is not None

    def id_of(self, name: str | None) -> int | None:
        """The id of the photo named `name`, or None when the table has no such photo."""
        if not isinstance(name, str):
            return None
        key = name.encode(*_ENCODING)
        at = bisect.bisect_left(_SortedNames(self), key)
        if at < len(self) and _SortedNames(self)[at] == key:
            return int(self._order[at])
        return None


class _SortedNames:
    """The encoded names in `name_order` order, as the sequence `bisect` searches."""

    def __init__(self, names: MappedNames):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, at: int) -> bytes:
        return self.names._encoded(int(self.names._order[at]))


def column_paths(folder: Path, files: dict[str, str]) -> list[Path]:
    """The table's files in COLUMNS order (the order the manifest records their sizes in)."""
    return [Path(folder) / files[c] for c in COLUMNS]

