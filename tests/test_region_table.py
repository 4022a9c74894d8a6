"""The Searcher's region table (search/region_table.py): written one `.npy` a column beside the index
and opened memory-mapped, so a million-photo collection costs no memory before a search reads it;
an index written before (its table in one `index-<gen>.npz`) still opens and searches the same."""
import json
from dataclasses import astuple
import os

import numpy as np
import pytest

from dasr_annotator.engine.project.project import NoIndex, Project
from dasr_annotator.engine.search import region_table
from dasr_annotator.engine.search.region_table import RegionTable, open_table, table_files, write_table
from dasr_annotator.engine.types import Box
from tests.test_collection import COLOURS, TinyExtractor, make_image

NAMES = ["été/ça.png", "a/b.png", "a.png", "z/IMG_0001.png", "a/b/c.png", "Ω.png", "a b.png", "A.png"]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    for i, name in enumerate(NAMES):
        make_image(root / name, COLOURS[i % len(COLOURS)], seed=i)
    return root


def hits_of(searcher, names, **kw):
    """Every photo's box search and whole-photo search, as comparable tuples."""
    out = []
    for name in names:
        desc = searcher.query_descriptor(name, Box(0, 0, 24, 32))
        for hit in searcher.search(desc[None], top_k=5, **kw) + searcher.search(desc[None], 3, exclude_image=name):
            out.append((hit.image, round(hit.score, 6), hit.box.as_list(), astuple(hit.ellipse)))
        out += [(h.image, round(h.score, 6), h.box.as_list()) for h in searcher.search_image(name, top_k=4)]
    return out


def as_written_before(project: Project) -> None:
    """Store the current index's region table as indexes did before it was memory-mapped: one
    `index-<gen>.npz` (images, sizes, image, boxes, ellipses, scores) recorded as `meta`."""
    manifest = json.loads(project.manifest_path.read_text())
    info = manifest["index"]
    files = info.pop("table")
    columns = {c: np.load(project.state_dir / f) for c, f in files.items()}
    offsets = columns["name_offsets"]
    names = [columns["names"][a:b].tobytes().decode("utf-8", "surrogatepass") for a, b in zip(offsets, offsets[1:])]
    info["meta"] = info["file"].replace(".faiss", ".npz")
    np.savez(project.state_dir / info["meta"], images=np.array(names, dtype=str), sizes=columns["sizes"],
             image=columns["image"], boxes=columns["boxes"], ellipses=columns["ellipses"], scores=columns["scores"])
    for name in files.values():
        (project.state_dir / name).unlink()
    info["bytes"] = [p.stat().st_size for p in project._index_paths(info)]
    project.manifest_path.write_text(json.dumps(manifest))


def test_the_region_table_is_memory_mapped_and_complete(folder):
    ex = TinyExtractor()
    Project.open(folder).update_index(ex)
    project = Project.open(folder)
    info = project.manifest()["index"]
    assert set(info["table"]) == set(region_table.COLUMNS) and "meta" not in info
    assert not list(project.state_dir.glob("index-*.npz"))
    searcher = project.searcher(ex)
    for column in (searcher.region_image, searcher.table.boxes, searcher.ellipses, searcher.sizes):
        assert isinstance(column, np.memmap) and not column.flags.writeable
    assert sorted(searcher.images) == sorted(NAMES) and len(searcher.images) == len(NAMES)
    for i, name in enumerate(searcher.images):
        assert searcher.images.id_of(name) == i and name in searcher.images and searcher.images[i - len(NAMES)] == name
        rows = searcher.region_rows([name])
        assert len(rows) == 2 and set(searcher.region_image[rows].tolist()) == {i}
    assert "b.png" not in searcher.images and searcher.images.id_of("a") is None
    assert np.array_equal(searcher.region_rows(list(NAMES) + ["gone.png"]), np.arange(searcher.n_regions))
    assert searcher.boxes[searcher.region_rows(["a.png"])].dtype == np.float64


def test_an_index_written_before_opens_and_searches_the_same(folder):
    ex = TinyExtractor()
    Project.open(folder).update_index(ex)
    mapped = hits_of(Project.open(folder).searcher(ex), NAMES)
    project = Project.open(folder)
    as_written_before(project)
    searcher = Project.open(folder).searcher(ex)
    assert not isinstance(searcher.region_image, np.memmap)
    assert hits_of(searcher, NAMES) == mapped
    # an unchanged folder keeps that index; a change writes the current layout
    manifest = project.manifest_path.read_bytes()
    Project.open(folder).update_index(ex)
    assert project.manifest_path.read_bytes() == manifest
    (folder / "A.png").unlink()
    Project.open(folder).update_index(ex)
    info = project.manifest()["index"]
    assert "table" in info and "meta" not in info and not list(project.state_dir.glob("index-*.npz"))
    assert "A.png" not in Project.open(folder).searcher(ex).images


def _longer(project, info):
    path = project.state_dir / info["table"]["boxes"]
    path.write_bytes(path.read_bytes() + b"\0" * 16)


def _missing(project, info):
    (project.state_dir / info["table"]["name_order"]).unlink()


def _offsets_of_another_table(project, info):
    """Same size, other content: the size check passes, the columns do not agree."""
    path = project.state_dir / info["table"]["name_offsets"]
    offsets = np.load(path)
    np.save(path, offsets + 3)


def _columns_swapped(project, info):
    """Two columns put in each other's place, their sizes recorded as if written so."""
    table = info["table"]
    table["boxes"], table["ellipses"] = table["ellipses"], table["boxes"]
    info["bytes"] = [p.stat().st_size for p in project._index_paths(info)]


@pytest.mark.parametrize("damage", [_longer, _missing, _offsets_of_another_table, _columns_swapped])
def test_a_damaged_region_table_is_refused(folder, damage):
    ex = TinyExtractor()
    Project.open(folder).update_index(ex)
    project = Project.open(folder)
    manifest = project.manifest()
    damage(project, manifest["index"])
    project.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(NoIndex, match="damaged or incomplete"):
        project.searcher(ex)


class Killed(BaseException):
    """The process dying mid-write."""


def test_a_write_killed_between_columns_leaves_the_previous_index_usable(folder, monkeypatch):
    ex = TinyExtractor()
    Project.open(folder).update_index(ex)
    project = Project.open(folder)
    before = project.manifest()["index"]
    (folder / "A.png").unlink()
    shown = [name for name in NAMES if name != "A.png"]
    hits = hits_of(project.searcher(ex), shown)
    committed = []
    real_commit = region_table.commit_temp

    def dying(tmp, path):
        if len(committed) == 3:
            raise Killed()
        committed.append(path)
        return real_commit(tmp, path)

    monkeypatch.setattr(region_table, "commit_temp", dying)
    with pytest.raises(Killed):
        Project.open(folder).update_index(ex)
    monkeypatch.undo()
    assert len(committed) == 3 and all(p.exists() for p in committed)  # half of the new table is in place
    assert project.manifest()["index"] == before
    searcher = Project.open(folder).searcher(ex)
    assert "A.png" in searcher.images and hits_of(searcher, shown) == hits  # the old index, whole
    (project.state_dir / f".{committed[0].name}.a1b2.tmp").write_bytes(b"\0" * 64)  # what a real kill leaves too
    Project.open(folder).update_index(ex)
    info = project.manifest()["index"]
    left = sorted(p.name for p in project.state_dir.iterdir() if p.name.startswith(("index-", ".index-")))
    assert left == sorted([info["file"], *info["table"].values()])
    assert "A.png" not in Project.open(folder).searcher(ex).images


def test_names_rows_and_boxes_read_from_the_mapped_columns(tmp_path):
    names = ["b.jpg", os.fsdecode(b"caf\xe9.jpg"), "a.jpg", "é/x.jpg", "a/a.jpg", "a.jpg.jpg"]
    per_photo = [3, 0, 1, 2, 0, 4]  # photos without regions keep their place
    image = np.repeat(np.arange(len(names)), per_photo).astype(np.int32)
    n = len(image)
    sizes = np.array([[40, 30], [10, 10], [1, 1], [50, 50], [5, 5], [64, 48]], np.int32)
    boxes = np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1))
    boxes[3] = [0.2, 0.4, 0.25, 0.5]  # in the 1 x 1 photo: thinner than a pixel
    files = table_files("g")
    write_table(tmp_path, files, names, sizes, image, boxes, np.arange(5 * n, dtype=np.float32).reshape(n, 5),
                np.zeros(n, np.float32))
    table = open_table(tmp_path, files)
    assert list(table.names) == names and table.names[-1] == names[-1] and table.names[1:3] == names[1:3]
    assert [table.names.id_of(name) for name in names] == list(range(len(names)))
    assert table.names.id_of("a") is None and table.names.id_of("zzz") is None and "" not in table.names
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.choice(len(names), rng.integers(0, len(names) + 1), replace=False)
        assert np.array_equal(table.rows_of(ids), np.flatnonzero(np.isin(image, ids)))
    assert np.allclose(table.boxes_of([3]), [[0.0, 0.0, 1.0, 1.0]])  # grown to the photo's pixel
    assert np.allclose(table.boxes_of(0), [1, 2, 10, 12]) and table.boxes_of([[0, 1]]).shape == (1, 2, 4)
    # rows not grouped by photo cannot be searched by range: refused when written, scanned in memory
    with pytest.raises(ValueError):
        write_table(tmp_path, table_files("h"), names, sizes, image[::-1], boxes, boxes[:, :1], boxes[:, 0])
    shuffled = RegionTable.from_arrays({"images": np.array(names), "sizes": sizes, "image": image[::-1],
                                        "boxes": boxes, "ellipses": boxes})
    assert not shuffled.grouped and np.array_equal(shuffled.rows_of([0, 5]), np.flatnonzero(np.isin(image[::-1],
                                                                                                  [0, 5])))


def test_an_empty_table_opens(tmp_path):
    files = table_files("e")
    write_table(tmp_path, files, [], np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5)), np.zeros(0))
    table = open_table(tmp_path, files)
    assert len(table.names) == 0 and table.names.id_of("a.jpg") is None and len(table.rows_of([])) == 0
