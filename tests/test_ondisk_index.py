"""The IVF indexes built from parts and opened without reading them whole: the re-ranked kind
(fast-scan lists in memory, SQ8 re-ranking codes read row by row from their file) and the older
IVF,SQ8 kind (inverted lists memory-mapped from an on-disk lists file)."""
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from dasr_annotator.engine.project import project as project_module
from dasr_annotator.engine.project.project import IncompatibleIndex, NoIndex, Project
from dasr_annotator.engine.search import index as faiss_index
from dasr_annotator.engine.search import region_table
from dasr_annotator.engine.types import Box, Cancelled
from tests.test_collection import TinyExtractor, make_image
from tests.test_index import clustered

SPEC = "IVF128,SQ8"  # the kind built before the re-ranking (still opened)
REFINED = "IVF128,PQ16x4fs,Refine(SQ8)"

pytestmark = pytest.mark.skipif(not hasattr(faiss, "OnDiskInvertedLists"),
                                reason="faiss has no on-disk inverted lists on this platform")


@pytest.fixture(scope="module")
def data():
    x = clustered(30_100, 32, seed=4)
    return x[100:], x[:100]  # indexed, held-out queries


def training_sample(x, spec=SPEC, seed=0):
    """The rows `build_index` trains on, so both builds share one quantizer."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), faiss_index.training_size(spec), replace=False))
    return x[rows]


def on_disk_lists(index):
    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)


def mapped_codes(index):
    """The re-ranking codes of a re-ranked index: a view of the file's pages when memory-mapped."""
    return faiss.downcast_index(index.refine_index).codes


def assert_same_ranking(d_a, i_a, d_b, i_b, atol=1e-5):
    """Equal results, up to the order of scores equal within float rounding (summed in another
    order by faiss and numpy, two near-equal scores can swap places or the k-th place)."""
    assert np.allclose(d_a, d_b, rtol=0, atol=atol)
    for da, ia, ib in zip(d_a, i_a, i_b):
        for j in np.flatnonzero(ia != ib):
            tied = np.abs(da - da[j]) <= atol
            assert ib[j] in ia[tied] or abs(da[j] - da[-1]) <= atol
    assert (i_a == i_b).mean() > 0.99


def resident_kb(path) -> int:
    """Kilobytes of `path`'s pages mapped into this process (its mappings' Rss in /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if line[0] in "0123456789abcdef" and "-" in head[0]:  # a mapping's first line
                inside = len(head) >= 6 and head[-1] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_the_refined_index_mapped_returns_the_same_hits_as_in_memory(data, tmp_path):
    x, queries = data
    in_memory = faiss_index.build_index(x, spec=REFINED)
    assert in_memory.k_factor in faiss_index.REFINE_FACTORS and mapped_codes(in_memory.index).is_owned
    mapped = faiss_index.build_ondisk_index([x[:12_000], x[12_000:]], training_sample(x, REFINED),
                                            tmp_path / "index-a.faiss", REFINED)
    # the fast-scan index and the re-ranking codes; no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index-a.faiss", "index-a.refine"]
    assert (tmp_path / "index-a.refine").stat().st_size > len(x) * 32
    # (each tuned on its own queries: the whole collection's, the training sample's)
    assert min(mapped.recall_at_100, in_memory.recall_at_100) >= faiss_index.REFINED_TARGET_RECALL
    reopened = faiss_index.open_index(tmp_path / "index-a.faiss", in_memory.nprobe, in_memory.k_factor)
    faiss_index._with_settings(mapped.index, in_memory.nprobe, in_memory.k_factor)
    for opened in (reopened, mapped.index):
        assert isinstance(opened, faiss_index.PreadRefine)
        assert opened.ntotal == len(x) and opened.k_factor == in_memory.k_factor
        d_mem, i_mem = in_memory.index.search(queries, 100)
        d_map, i_map = opened.search(queries, 100)
        # the same candidates re-ranked on the same codes (numpy sums them in another order)
        assert_same_ranking(d_map, i_map, d_mem, i_mem)
        assert_same_ranking(*opened.search(queries[3], 10), *in_memory.index.search(queries[3:4], 10))  # another k
    ids = np.array([0, 11_999, 12_000, len(x) - 1])
    back = faiss_index.reconstruct(reopened, ids)
    assert np.array_equal(back, faiss_index.reconstruct(in_memory.index, ids)) and np.allclose(back, x[ids], atol=0.02)
    assert np.array_equal(reopened.reconstruct(7), faiss_index.reconstruct(in_memory.index, np.array([7]))[0])
    _, found = reopened.search(queries, 100)
    assert faiss_index.recall_at(found, faiss_index.exact_search(x, queries, 100)) >= 0.95
    # a re-ranking factor recorded for an index that does not re-rank: refused (as a damaged index)
    with pytest.raises(RuntimeError):
        faiss_index.load_index(faiss_index.build_index(x[:5000], spec="IVF64,SQ8").to_bytes(), 8, 4)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads the process's mappings from /proc")
def test_re_ranking_reads_the_codes_without_mapping_them_into_the_process(data, tmp_path):
    """Issue #20: at 12.5M regions, re-ranking through a memory map left the 1.4 GB codes file
    resident in the searching process; read row by row, only the header's pages are mapped."""
    x, queries = data
    path = tmp_path / "index-a.faiss"
    built = faiss_index.build_ondisk_index([x], training_sample(x, REFINED), path, REFINED)
    codes_kb = path.with_suffix(".refine").stat().st_size // 1024
    index = faiss_index.open_index(path, built.nprobe, 32)
    for q in np.resize(queries, (300, queries.shape[1])):  # 3,200 random rows a query, 30x the file's rows
        index.search(q[None], 100)
    faiss_index.reconstruct(index, np.arange(0, len(x), 7))
    # faiss's own re-ranking on the same files maps (nearly) every page of the codes
    mapped = faiss.IndexRefine(faiss.read_index(str(path)), faiss.read_index(str(path.with_suffix(".refine")),
                                                                            faiss.IO_FLAG_MMAP_IFC))
    faiss_index._with_settings(mapped, built.nprobe, 32)
    mapped.search(np.resize(queries, (300, queries.shape[1])), 100)
    assert codes_kb > 900 and resident_kb(path.with_suffix(".refine")) > codes_kb // 2
    del mapped
    assert resident_kb(path.with_suffix(".refine")) <= 128  # the header (and the kernel's fault-around)


def test_a_codes_file_of_another_length_is_refused(data, tmp_path):
    """Rows are read at offsets from the file's end: a file cut short or grown must not be read
    at shifted offsets (wrong codes, silently) but refused, as a damaged index is."""
    x, _ = data
    path = tmp_path / "index-a.faiss"
    built = faiss_index.build_ondisk_index([x[:5000]], training_sample(x, REFINED)[:5000], path, REFINED)
    codes = path.with_suffix(".refine")
    whole = codes.read_bytes()
    for damaged in (whole[:-10], whole + b"\0" * 32):
        codes.write_bytes(damaged)
        with pytest.raises(RuntimeError):
            faiss_index.open_index(path, built.nprobe, built.k_factor)
    codes.write_bytes(whole)
    assert faiss_index.open_index(path, built.nprobe, built.k_factor).ntotal == 5000


def test_memory_mapped_index_returns_the_same_hits_as_the_in_memory_one(data, tmp_path):
    x, queries = data
    in_memory = faiss_index.build_index(x, spec=SPEC)
    mapped = faiss_index.build_ondisk_index([x[:12_000], x[12_000:]], training_sample(x), tmp_path / "index-a.faiss",
                                            SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index-a.faiss", "index-a.ivfdata"]  # no temp files left
    reopened = faiss_index.open_index(tmp_path / "index-a.faiss", in_memory.nprobe)
    assert isinstance(on_disk_lists(reopened), faiss.OnDiskInvertedLists)
    assert reopened.ntotal == len(x)
    # the lists live in the file; the header the reader loads is the quantizer and the list offsets
    assert (tmp_path / "index-a.faiss").stat().st_size < (tmp_path / "index-a.ivfdata").stat().st_size / 10
    faiss.extract_index_ivf(in_memory.index).nprobe = in_memory.nprobe
    for opened in (reopened, mapped.index):
        faiss.extract_index_ivf(opened).nprobe = in_memory.nprobe
        d_mem, i_mem = in_memory.index.search(queries, 100)
        d_map, i_map = opened.search(queries, 100)
        assert np.array_equal(i_map, i_mem) and np.array_equal(d_map, d_mem)
    ids = np.array([0, 11_999, 12_000, len(x) - 1])
    assert np.array_equal(faiss_index.reconstruct(reopened, ids), faiss_index.reconstruct(in_memory.index, ids))
    # tuned as the in-memory build tunes: recall on held-out queries meets the goal at its nprobe
    faiss.extract_index_ivf(reopened).nprobe = mapped.nprobe
    _, found = reopened.search(queries, 100)
    assert faiss_index.recall_at(found, faiss_index.exact_search(x, queries, 100)) >= 0.95


@pytest.mark.parametrize("spec", [REFINED, SPEC])
def test_parts_added_independently_equal_one_build(data, tmp_path, spec):
    x, queries = data
    sample = training_sample(x, spec, seed=3)
    whole = faiss_index.build_ondisk_index([x], sample, _folder(tmp_path, "whole") / "i.faiss", spec)
    cuts = [0, 7, 9_000, 9_001, 21_500, len(x)]
    parts = faiss_index.build_ondisk_index((x[a:b] for a, b in zip(cuts, cuts[1:])), sample,
                                           _folder(tmp_path, "parts") / "i.faiss", spec)
    assert (parts.nprobe, parts.recall_at_100, parts.k_factor) == (whole.nprobe, whole.recall_at_100, whole.k_factor)
    assert parts.index.ntotal == whole.index.ntotal == len(x)
    d_whole, i_whole = whole.index.search(queries, 100)
    d_parts, i_parts = parts.index.search(queries, 100)
    assert np.array_equal(i_parts, i_whole) and np.array_equal(d_parts, d_whole)
    # every list holds the same ids in the same order, and the files are the same
    a, b = faiss.extract_index_ivf(whole.index).invlists, faiss.extract_index_ivf(parts.index).invlists
    for lst in range(a.nlist):
        assert a.list_size(lst) == b.list_size(lst)
    for name in sorted(p.name for p in (tmp_path / "whole").iterdir()):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()


def _folder(root, name):
    folder = root / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.mark.parametrize("spec", [REFINED, SPEC])
def test_a_cancelled_build_leaves_nothing_behind(data, tmp_path, spec):
    x, _ = data
    added = []

    def parts():
        for start in range(0, len(x), 10_000):
            added.append(start)
            yield x[start:start + 10_000]

    with pytest.raises(Cancelled):
        faiss_index.build_ondisk_index(parts(), training_sample(x, spec), tmp_path / "index-b.faiss", spec,
                                       cancel=lambda: len(added) >= 2)
    assert list(tmp_path.iterdir()) == []


# ---- a project over the size threshold -------------------------------------------------------------
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 120, 120), (240, 240, 240)]


@pytest.fixture
def big_folder(tmp_path, monkeypatch):
    """40 photos (80 regions) with the exact-index limit lowered so they get an IVF index, read
    in parts of 24 regions."""
    monkeypatch.setattr(faiss_index, "EXACT_MAX_WORK", 100)
    monkeypatch.setattr(project_module, "INDEX_PART_REGIONS", 24)
    root = tmp_path / "photos"
    rng = np.random.default_rng(5)
    for i in range(40):
        colour = np.clip(np.array(COLOURS[i % len(COLOURS)]) + rng.integers(-40, 40, 3), 0, 255)
        make_image(root / f"d{i % 3}" / f"p{i:02d}.png", tuple(int(c) for c in colour), seed=i)
    return root


def test_a_large_project_writes_and_reopens_a_memory_mapped_index(big_folder, capfd):
    ex = TinyExtractor()
    report = Project.open(big_folder).update_index(ex)
    assert report.regions == 80 and any("searched from disk" in note for note in report.notes)
    project = Project.open(big_folder)
    info = project.manifest()["index"]
    assert faiss_index.is_refined(info["type"]) and "ivfdata" not in info
    assert info["refine"] == info["file"].replace(".faiss", ".refine") and "meta" not in info
    assert len(info["bytes"]) == 2 + len(region_table.COLUMNS)  # the index, its codes, the table's columns
    assert info["k_factor"] in faiss_index.REFINE_FACTORS
    searcher = project.searcher(ex)
    assert capfd.readouterr().out == ""  # `index --json` and `search --json` write their JSON there
    assert isinstance(searcher.index, faiss_index.PreadRefine) and searcher.index.k_factor == info["k_factor"]
    assert faiss.extract_index_ivf(searcher.index).nprobe == info["nprobe"]
    assert searcher.index.ntotal == 80 and len(searcher.images) == 40
    for name in ("d0/p00.png", "d1/p07.png", "d2/p38.png"):
        desc = searcher.query_descriptor(name, Box(0, 0, 24, 32))
        hits = searcher.search(desc[None], top_k=3)
        # (both halves of a one-colour photo look alike to this extractor: only the photo is asserted)
        assert hits[0].image == name and hits[0].score == pytest.approx(1.0, abs=0.02) and len(hits) == 3
    # the region table is whole although it was read in parts: every image's regions point back to it
    assert np.array_equal(np.bincount(searcher.region_image, minlength=40), np.full(40, 2))

    (big_folder / "d1" / "p01.png").unlink()
    # what a build killed while writing leaves (the codes file is 1.4 GB at 12.5M regions)
    (project.state_dir / ".index-killed.refine.x1y2.tmp").write_bytes(b"\0" * 64)
    Project.open(big_folder).update_index(TinyExtractor())
    new_info = Project.open(big_folder).manifest()["index"]
    assert new_info["file"] != info["file"] and new_info["regions"] == 78
    left = sorted(p.name for p in project.state_dir.iterdir() if p.name.startswith(("index-", ".index-")))
    # old generation, temp files gone
    assert left == sorted([new_info["file"], new_info["refine"], *new_info["table"].values()])
    # the searcher opened before the rebuild still reads its (now unlinked) lists
    again = searcher.query_descriptor("d0/p00.png", Box(0, 0, 24, 32))
    assert searcher.search(again[None], top_k=1)[0].image == "d0/p00.png"


def test_an_index_written_before_the_re_ranking_still_opens(big_folder, monkeypatch, capfd):
    """A project indexed by the IVF,SQ8 kind (lists in `.ivfdata`, no `k_factor` in the manifest)."""
    with monkeypatch.context() as patched:
        patched.setattr(faiss_index, "index_spec", lambda n, dim: "IVF64,SQ8")
        Project.open(big_folder).update_index(TinyExtractor())
    project = Project.open(big_folder)
    info = project.manifest()["index"]
    assert info["type"] == "IVF64,SQ8" and "k_factor" not in info and "refine" not in info
    assert info["ivfdata"] == info["file"].replace(".faiss", ".ivfdata")
    assert len(info["bytes"]) == 2 + len(region_table.COLUMNS)
    searcher = project.searcher(TinyExtractor())
    # faiss prints the lists file's name when it builds and opens it: never onto stdout
    out, err = capfd.readouterr()
    assert out == "" and info["ivfdata"] in err
    assert isinstance(on_disk_lists(searcher.index), faiss.OnDiskInvertedLists)
    assert faiss.extract_index_ivf(searcher.index).nprobe == info["nprobe"]
    desc = searcher.query_descriptor("d1/p07.png", Box(0, 0, 24, 32))
    assert searcher.search(desc[None], top_k=1)[0].image == "d1/p07.png"
    # an unchanged folder keeps it; a change rebuilds it as the current kind
    Project.open(big_folder).update_index(TinyExtractor())
    assert Project.open(big_folder).manifest()["index"]["file"] == info["file"]
    (big_folder / "d1" / "p01.png").unlink()
    Project.open(big_folder).update_index(TinyExtractor())
    assert faiss_index.is_refined(Project.open(big_folder).manifest()["index"]["type"])


@pytest.mark.parametrize("spec", [None, "IVF64,SQ8"])
def test_an_incompatible_index_is_refused(big_folder, tmp_path, monkeypatch, spec):
    if spec:
        monkeypatch.setattr(faiss_index, "index_spec", lambda n, dim: spec)
    project = Project.open(big_folder)
    project.update_index(TinyExtractor())
    with pytest.raises(IncompatibleIndex):
        project.searcher(TinyExtractor(dim=12))
    # index files of another collection (other descriptor size) put in place of this one's
    other = tmp_path / "other"
    for i in range(40):
        make_image(other / f"o{i}.png", COLOURS[i % len(COLOURS)], seed=100 + i)
    other_project = Project.open(other)
    other_project.update_index(TinyExtractor(dim=12))
    theirs = other_project.manifest()["index"]
    manifest = project.manifest()
    ours = manifest["index"]
    for key in {"file", "ivfdata", "refine"} & set(ours):  # same number of regions: only the dimension differs
        (project.state_dir / theirs[key]).write_bytes((other_project.state_dir / theirs[key]).read_bytes())
        ours[key] = theirs[key]
    ours["bytes"] = [p.stat().st_size for p in project._index_paths(ours)]
    project.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(NoIndex, match="damaged"):
        project.searcher(TinyExtractor())


def test_the_latency_benchmark_measures_the_memory_mapped_index(monkeypatch, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "search_latency.py"
    spec = importlib.util.spec_from_file_location("search_latency", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(faiss_index, "EXACT_MAX_WORK", 1000)  # an IVF index at a size a test can build
    result = bench.measure_mmap(20_000, queries=20, seed=0, raw_dim=32, train=None, folder=tmp_path / "kept")
    contract = {"p50_ms", "p95_ms", "recall_at_100", "bytes_per_region", "peak_rss_mb", "build_s"}
    assert contract <= set(result) and result["mmap"] is True
    assert result["index_type"].startswith("IVF") and result["dim"] == 32
    assert 0 < result["p50_ms"] <= result["p95_ms"] and result["build_s"] > 0
    assert result["recall_at_100"] >= 0.9 and result["peak_rss_mb"] >= result["rss_anon_mb"] > 0
    # and a process searching as the desktop does: the index and a memory-mapped region table
    assert result["searcher_peak_rss_mb"] >= result["searcher_rss_anon_mb"] > 0
    assert result["index_type"] == "IVF512,PQ16x4fs,Refine(SQ8)" and result["k_factor"] in faiss_index.REFINE_FACTORS
    # an 8-byte fast-scan code (4 bits a pair of dims), an 8-byte id and 32 one-byte re-ranking
    # codes a region, plus the header (the quantizer's 512 centroids: 3.3 bytes a region)
    assert 51 <= result["bytes_per_region"] < 56
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["index.faiss", "index.refine"]


def test_a_search_re_ranks_as_many_candidates_as_its_photos_need(data, tmp_path, monkeypatch):
    """The Searcher asks for 4x as many regions as the photos it wants; re-ranking k_factor x all
    of them read 4x the codes at 12.5M regions for regions that only fill up the photo list."""
    from dasr_annotator.engine.search.searcher import Searcher

    x, queries = data
    path = tmp_path / "index-a.faiss"
    built = faiss_index.build_ondisk_index([x], training_sample(x, REFINED), path, REFINED)
    index = faiss_index.open_index(path, built.nprobe, 16)
    read = []
    rows = faiss_index.PreadRefine.rows
    monkeypatch.setattr(faiss_index.PreadRefine, "rows", lambda self, ids: read.append(len(ids)) or rows(self, ids))
    n_images = len(x) // 3
    meta = {"images": np.array([f"p{i:05d}.jpg" for i in range(n_images)]), "sizes": np.full((n_images, 2), 64),
            "image": np.arange(len(x)) // 3, "boxes": np.ones((len(x), 4), np.float32),
            "ellipses": np.ones((len(x), 5), np.float32)}
    searcher = Searcher(None, object(), index, meta, None)
    hits = searcher.search(queries[:1], top_k=20)  # 80 regions asked for
    assert read == [16 * 20]
    # the best 20 regions are those of a search for 20 alone, re-ranked on as many candidates
    read.clear()
    d_20, i_20 = index.search(queries[:1], 20)
    d_80, i_80 = faiss_index.search_regions(index, queries[:1], 80, 20)
    assert read == [16 * 20, 16 * 20] and np.array_equal(i_80[:, :20], i_20)
    assert hits[0].image == f"p{i_20[0, 0] // 3:05d}.jpg" and len(hits) == 20
    # faiss's own re-ranking takes the same parameters
    mapped = faiss.IndexRefine(faiss.read_index(str(path)), faiss.read_index(str(path.with_suffix(".refine")),
                                                                            faiss.IO_FLAG_MMAP_IFC))
    faiss_index._with_settings(mapped, built.nprobe, 16)
    assert_same_ranking(*faiss_index.search_regions(mapped, queries[:1], 80, 20), d_80, i_80)


def test_a_whole_photo_search_re_ranks_as_many_candidates_as_its_photos_need(data, tmp_path, monkeypatch):
    """Each of the query photo's regions fetches >= 4096 regions at IVF sizes: re-ranking
    k_factor x all of them read 32 x 4096 codes a region at 12.5M regions (~2 s a photo)."""
    from dasr_annotator.engine.search import image_search
    from dasr_annotator.engine.search.searcher import Searcher

    x, _ = data
    path = tmp_path / "index-a.faiss"
    built = faiss_index.build_ondisk_index([x], training_sample(x, REFINED), path, REFINED)
    monkeypatch.setattr(image_search, "EXACT_REGIONS", 1000)  # the candidate count of a large collection
    n_images = len(x) // 3
    meta = {"images": np.array([f"p{i:05d}.jpg" for i in range(n_images)]), "sizes": np.full((n_images, 2), 64),
            "image": np.arange(len(x)) // 3, "boxes": np.ones((len(x), 4), np.float32),
            "ellipses": np.ones((len(x), 5), np.float32)}

    class Folder:
        photos = tmp_path

        def relative(self, path):
            return path.relative_to(tmp_path).as_posix()

    hits = {}
    for k_factor in (1, 16):
        read = []
        index = faiss_index.open_index(path, 128, k_factor)  # every list probed: full candidate lists
        rows = faiss_index.PreadRefine.rows
        with monkeypatch.context() as patched:
            patched.setattr(faiss_index.PreadRefine, "rows",
                            lambda self, ids: read.append(len(ids)) or rows(self, ids))
            hits[k_factor] = Searcher(Folder(), object(), index, meta, None).search_image("p00007.jpg", top_k=20)
        # the query photo's 3 stored regions, then 4096 regions for each: 16 x 40 x 20 candidates
        # re-ranked for each, not 16 x 4096
        assert read == [3, 3 * (4096 if k_factor == 1 else k_factor * image_search.CANDIDATES_PER_HIT * 20)]
    assert len(hits[16]) == 20 and "p00007.jpg" not in [h.image for h in hits[16]]
