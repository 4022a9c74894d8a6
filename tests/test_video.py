"""Videos in the collection: frame names, sampling, decoding, rotation, bad input, COCO round trip.

Every clip is encoded at test time from dev frames (tests/video_clips.py), tiny and short.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from dasr_annotator.engine.project.project import Project
from dasr_annotator.engine.store.coco import export_coco, import_coco
from dasr_annotator.engine.store.collection import content_hash, fingerprint, scan_images
from dasr_annotator.engine.store.imageio import ImageError, image_size, load_image
from dasr_annotator.engine.store.video import (format_time, frame_name, media_file, order_key, probe_video,
                                               split_frame_name)
from dasr_annotator.engine.types import Box
from tests.video_clips import audio_only, av_clip, dev_clip, dev_frames, numbered

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def box_frames(dev_data):
    return dev_frames(dev_data, 9)


@pytest.fixture
def photos(tmp_path, box_frames):
    """A folder with one photo and one 9-frame, 4 fps clip of a dev sequence (2.0 s long)."""
    folder = tmp_path / "photos"
    (folder / "clips").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(box_frames[0][0]).save(folder / "photo.jpg")
    dev_clip(folder / "clips" / "box.mp4", [rgb for rgb, _ in box_frames], fps=4)
    return folder


# ---- names -----------------------------------------------------------------------------------
def test_frame_names_round_trip_and_only_name_videos():
    assert frame_name("clips/box.mp4", 12) == "clips/box.mp4#frame=12"
    ref = split_frame_name("clips/a b#c.MOV#frame=0012")
    assert (ref.video, ref.frame) == ("clips/a b#c.MOV", 12)
    assert split_frame_name("photo.jpg#frame=3") is None
    assert split_frame_name("clip.mp4#frame=") is None
    assert split_frame_name("clip.mp4") is None


def test_a_real_file_named_like_a_frame_is_that_file(tmp_path):
    odd = tmp_path / "x.mp4#frame=3"
    odd.write_bytes(b"data")
    assert media_file(odd) == odd
    assert media_file(tmp_path / "y.mp4#frame=3") == tmp_path / "y.mp4"


# ---- sampling and decoding -------------------------------------------------------------------
def test_scan_lists_sampled_frames_with_times(photos):
    scan = scan_images(photos)
    assert scan.files == ["clips/box.mp4#frame=0", "clips/box.mp4#frame=4", "clips/box.mp4#frame=8", "photo.jpg"]
    assert scan.frame_times == {"clips/box.mp4#frame=0": 0.0, "clips/box.mp4#frame=4": 1.0,
                                "clips/box.mp4#frame=8": 2.0}
    assert scan_images(photos, video_fps=2).files[:5] == [f"clips/box.mp4#frame={i}" for i in (0, 2, 4, 6, 8)]
    assert len(scan_images(photos, video_fps=30).files) == 9 + 1  # never more than every frame
    assert scan.problems == []


def test_frames_decode_to_their_dev_image(photos, box_frames):
    for n in (0, 4, 7):
        loaded = load_image(photos / f"clips/box.mp4#frame={n}")
        assert (loaded.width, loaded.height, loaded.scale) == (160, 120, 1.0)
        assert np.abs(loaded.rgb.astype(int) - box_frames[n][0]).mean() < 8  # lossy codec
        other = box_frames[n + 1 if n < 8 else 0][0]
        assert np.abs(loaded.rgb.astype(int) - other).mean() > np.abs(loaded.rgb.astype(int) - box_frames[n][0]).mean()
    small = load_image(photos / "clips/box.mp4#frame=4", max_side=40)
    assert small.rgb.shape == (30, 40, 3) and (small.width, small.height) == (160, 120)
    assert image_size(photos / "clips/box.mp4#frame=4") == (160, 120)
    with pytest.raises(ImageError, match="not in the video"):
        load_image(photos / "clips/box.mp4#frame=9")


def test_frames_share_their_videos_fingerprint_and_hash(photos):
    video = photos / "clips" / "box.mp4"
    assert fingerprint(photos / "clips/box.mp4#frame=4") == fingerprint(video)
    assert content_hash(photos / "clips/box.mp4#frame=4") == content_hash(video)


def test_variable_frame_rate_is_sampled_by_time_and_decoded_exactly(tmp_path):
    # frames alternate 40 ms and 160 ms: frame i starts at 100 * i - 60 * (i % 2) ms
    durations = [40 if i % 2 == 0 else 160 for i in range(30)]
    path = av_clip(tmp_path / "vfr.mp4", numbered(30), durations)
    info = probe_video(path)
    starts = np.cumsum([0] + durations[:-1]) / 1000
    assert info.variable_rate and info.frames == 30
    assert info.sample(1) == [int(np.searchsorted(starts, t - 1e-6)) for t in (0, 1, 2)]
    for n in (3, 13, 16, 29):  # seeking lands on the frame itself, not a neighbour
        assert abs(int(load_image(f"{path}#frame={n}").rgb.mean()) - n * 8) <= 2
    assert abs(info.time_of(13) - starts[13]) < 1e-3


def test_rotation_metadata_is_applied(tmp_path):
    marked = np.zeros((120, 160, 3), np.uint8)
    marked[:20, :20] = 255  # top-left corner white as stored
    path = av_clip(tmp_path / "phone.mp4", [marked] * 3, rotation=90)
    assert image_size(f"{path}#frame=1") == (120, 160)
    rgb = load_image(f"{path}#frame=1").rgb
    assert rgb.shape == (160, 120, 3)
    assert rgb[150, 5].mean() > 200 and rgb[5, 5].mean() < 50  # turned counter-clockwise: now bottom-left
    half = load_image(f"{path}#frame=1", max_side=80)
    assert half.rgb.shape == (80, 60, 3)


# ---- bad input -------------------------------------------------------------------------------
def test_bad_videos_are_skipped_with_a_reason(tmp_path, box_frames):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = dev_clip(folder / "good.avi", [rgb for rgb, _ in box_frames[:4]], fps=2)
    (folder / "empty.mp4").write_bytes(b"")
    audio_only(folder / "sound.mp4")
    (folder / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 255, 4000, np.uint8).tobytes())
    data = dev_clip(tmp_path / "whole.mp4", [rgb for rgb, _ in box_frames]).read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    scan = scan_images(folder)
    reasons = {p["file"]: p["reason"] for p in scan.problems}
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["sound.mp4"] == "no video stream in the file (audio only?)"
    assert reasons["noise.mkv"].startswith("not a readable video")
    assert reasons["cut.mp4"].startswith("not a readable video")
    assert scan.files == [f"good.avi#frame={i}" for i in (0, 2)]
    assert good.exists()


def test_truncated_video_with_its_index_first_keeps_the_frames_before_the_cut(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8) for i in range(24)]
    whole = av_clip(tmp_path / "whole.mp4", frames, container_options={"movflags": "faststart"},
                    options={"g": "4"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    info = probe_video(cut)
    assert load_image(f"{cut}#frame=0").rgb.shape == (120, 160, 3)
    decoded, reasons = 0, set()
    for n in range(info.frames):
        try:
            load_image(f"{cut}#frame={n}")
            decoded += 1
        except ImageError as exc:
            reasons.add(exc.reason.split(" cannot")[0].split(" ")[0] + " ... " + exc.reason.split("(")[-1])
    assert 0 < decoded < 24 and reasons, "frames past the cut are refused with a reason"
    assert all("truncated" in r for r in reasons)


def test_4k_10_bit_video_is_decoded_reduced(tmp_path):
    frame = np.zeros((2160, 3840, 3), np.uint8)
    frame[:, 1920:] = 200
    path = av_clip(tmp_path / "uhd.mkv", [frame, frame], pix_fmt="yuv420p10le",
                   options={"preset": "ultrafast"})
    info = probe_video(path)
    assert (info.width, info.height) == (3840, 2160)
    loaded = load_image(f"{path}#frame=1", max_side=512)
    assert loaded.rgb.shape == (288, 512, 3) and loaded.rgb.dtype == np.uint8
    assert loaded.rgb[:, :200].mean() < 20 and loaded.rgb[:, 312:].mean() > 180


def test_huge_file_is_indexed_in_bounded_memory(tmp_path, box_frames):
    """A clip followed by 1 GB of (sparse) padding: probing, hashing and decoding stay far below
    the file's size in memory."""
    path = dev_clip(tmp_path / "huge.mp4", [rgb for rgb, _ in box_frames[:4]], fps=2)
    with open(path, "r+b") as f:
        f.truncate(1024 ** 3)
    script = (
        "import sys\n"
        "from dasr_annotator.engine.store.collection import content_hash, scan_images\n"
        "from dasr_annotator.engine.store.imageio import load_image\n"
        f"scan = scan_images(r'{tmp_path}')\n"
        "rgb = load_image(r'" + str(tmp_path) + "/' + scan.files[-1]).rgb\n"
        "digest = content_hash(r'" + str(tmp_path) + "/' + scan.files[0])\n"
        # VmHWM, not ru_maxrss: the latter keeps the forking test process's size across exec
        "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(len(scan.files), rgb.shape[0], peak // 1024)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert done.returncode == 0, done.stderr
    frames, height, peak_mb = map(int, done.stdout.split())
    assert (frames, height) == (2, 120)
    assert peak_mb < 300, f"peak memory {peak_mb} MB for a 1 GB file"


# ---- project and COCO ------------------------------------------------------------------------
def test_video_fps_is_kept_per_folder(photos):
    project = Project.open(photos)
    assert project.video_fps() == 1.0
    project.set_video_fps(2)
    assert Project.open(photos).video_fps() == 2.0
    assert len([f for f in Project.open(photos).scan() if "#frame=" in f]) == 5
    with pytest.raises(ValueError):
        project.set_video_fps(0)


def test_coco_export_writes_frames_and_imports_them_back(photos, box_frames, tmp_path):
    project = Project.open(photos)
    store = project.annotations
    store.add("clips/box.mp4#frame=4", "box", Box(*box_frames[4][1]), score=0.9)
    store.add("clips/box.mp4#frame=8", "box", Box(*box_frames[8][1]))
    store.add("photo.jpg", "box", Box(*box_frames[0][1]))
    store.save()
    out, frames_dir = tmp_path / "export" / "labels.json", tmp_path / "export" / "frames"
    out.parent.mkdir()
    report = export_coco(project, out, frames_dir=frames_dir)
    assert (report.images, report.annotations, report.frames, report.skipped) == (3, 3, 2, [])
    coco = COCO(str(out))
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    assert set(by_name) == {"clips/box.mp4/frame_000004.jpg", "clips/box.mp4/frame_000008.jpg", "photo.jpg"}
    entry = by_name["clips/box.mp4/frame_000004.jpg"]
    assert (entry["video"], entry["frame_index"], entry["timestamp"]) == ("clips/box.mp4", 4, 1.0)
    assert "video" not in by_name["photo.jpg"]
    from PIL import Image

    written = np.asarray(Image.open(frames_dir / entry["file_name"]))
    assert written.shape == (entry["height"], entry["width"], 3)
    assert np.abs(written.astype(int) - box_frames[4][0]).mean() < 10
    assert len(coco.getAnnIds(imgIds=[entry["id"]])) == 1

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "clips").mkdir()
    (fresh / "clips" / "box.mp4").write_bytes((photos / "clips" / "box.mp4").read_bytes())
    (fresh / "photo.jpg").write_bytes((photos / "photo.jpg").read_bytes())
    again = Project.open(fresh)
    imported = import_coco(again, out)
    assert imported.added == 3
    got = sorted((a.image, [round(v) for v in a.box.as_list()]) for a in again.annotations.list())
    want = sorted((a.image, [round(v) for v in a.box.as_list()]) for a in store.list())
    assert got == want


def test_cli_export_writes_frames_with_either_spelling_and_only_for_coco(photos, box_frames, tmp_path):
    from tests.test_cli_e2e import cli

    project = Project.open(photos)
    project.annotations.add("clips/box.mp4#frame=4", "box", Box(*box_frames[4][1]))
    project.annotations.add("photo.jpg", "box", Box(*box_frames[0][1]))
    project.annotations.save()
    for spelling in (["--coco", tmp_path / "a.json"], ["--format", "coco", "--out", tmp_path / "b.json"]):
        frames_dir = tmp_path / f"frames-{spelling[-1].stem}"
        rc, out, err = cli("export", photos, *spelling, "--frames", frames_dir, "--json")
        assert rc == 0, err
        summary = json.loads(out)
        assert (summary["format"], summary["images"], summary["frames"], summary["skipped"]) == ("coco", 2, 1, [])
        written = json.loads(Path(summary["file"]).read_text())["images"]
        frame = next(im for im in written if "video" in im)
        assert (frame["file_name"], frame["frame_index"]) == ("clips/box.mp4/frame_000004.jpg", 4)
        assert (frames_dir / frame["file_name"]).is_file()
    rc, out, _ = cli("export", photos, "--coco", tmp_path / "c.json", "--json")
    assert rc == 0 and "frames" not in json.loads(out)
    assert json.loads((tmp_path / "c.json").read_text())["images"][0]["file_name"] == "clips/box.mp4#frame=4"
    rc, _, err = cli("export", photos, "--format", "yolo", "--out", tmp_path / "yolo", "--frames", tmp_path / "f")
    assert rc == 2 and "--frames is for --format coco" in err
    assert not (tmp_path / "yolo").exists() and not (tmp_path / "f").exists()


def test_import_refuses_a_frame_the_video_lacks(photos, tmp_path):
    coco = {"images": [{"id": 1, "file_name": "x.jpg", "video": "clips/box.mp4", "frame_index": 40}],
            "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco))
    from dasr_annotator.engine.store.coco import CocoError

    with pytest.raises(CocoError, match="frame 40 is not in the video"):
        import_coco(Project.open(photos), path)


def test_times_read_as_minutes_and_seconds():
    assert (format_time(0), format_time(61.25), format_time(3725.96)) == ("0:00.0", "1:01.2", "1:02:06.0")


# ---- end to end through the CLI (real embedded backbone) ----------------------------------------
@pytest.fixture(scope="module")
def indexed_clips(dev_data, tmp_path_factory, one_torch_thread):
    """Two 12-frame dev clips (Box, Dog) at 4 fps, indexed at 1 fps: 3 frames each."""
    from tests.test_cli_e2e import cli

    folder = tmp_path_factory.mktemp("clips") / "photos"
    folder.mkdir()
    truth = {}
    for sequence in ("Box", "Dog"):
        frames = dev_frames(dev_data, 12, size=(320, 240), sequence=sequence)
        dev_clip(folder / f"{sequence.lower()}.mp4", [rgb for rgb, _ in frames], fps=4)
        truth[sequence.lower()] = [b for _, b in frames]
    rc, out, err = cli("index", folder, "--video-fps", 1, "--json")
    assert rc == 0, err
    return folder, truth, json.loads(out)


def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w, h = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_cli_indexes_frames_and_searches_with_a_frame_query(indexed_clips, tmp_path):
    from tests.test_cli_e2e import cli

    folder, truth, report = indexed_clips
    assert (report["images"], report["indexed"], report["skipped"]) == (6, 6, [])
    box = ",".join(f"{v:.1f}" for v in truth["box"][0])
    rc, out, err = cli("search", folder, "--query", "box.mp4#frame=0", "--box", box, "--top", 3, "--json")
    assert rc == 0, err
    hits = json.loads(out)["queries"][0]["hits"]
    assert {h["image"] for h in hits[:2]} == {"box.mp4#frame=4", "box.mp4#frame=8"}
    rc, out, err = cli("index", folder, "--video-fps", 2, "--json")  # finer: new frames only
    again = json.loads(out)
    assert rc == 0 and (again["images"], again["indexed"], again["reused"]) == (12, 6, 6)


def test_cli_propagates_a_box_to_neighbouring_frames_nearest_first(indexed_clips):
    from tests.test_cli_e2e import cli

    folder, truth, _ = indexed_clips
    box = ",".join(f"{v:.1f}" for v in truth["box"][4])
    rc, out, err = cli("search", folder, "--query", "box.mp4#frame=4", "--box", box, "--top", 1,
                       "--propagate", 0.5, "--propagate-fps", 4, "--json")
    assert rc == 0, err
    propagated = json.loads(out)["queries"][0]["propagated"]
    assert [h["image"] for h in propagated] == [f"box.mp4#frame={n}" for n in (3, 5, 2, 6)]
    overlaps = [_iou(h["box"], truth["box"][int(h["image"].split("=")[1])]) for h in propagated]
    # dev frames lie 5+ tracker frames apart, so the box moves a lot between clip frames
    assert min(overlaps) > 0.15 and np.mean(overlaps) > 0.35, overlaps
    # refined like search hits: the score is the blend of window and box similarity
    assert all(h["score"] == pytest.approx((h["region_score"] + h["box_score"]) / 2) for h in propagated)
    rc, out, err = cli("search", folder, "--query", "box.mp4#frame=4", "--box", box, "--top", 1,
                       "--propagate", 0.5, "--propagate-fps", 4, "--no-refine", "--json")
    assert rc == 0, err
    windows = json.loads(out)["queries"][0]["propagated"]
    assert [h["image"] for h in windows] == [h["image"] for h in propagated]
    assert all(set(h) == {"image", "score", "box", "ellipse"} for h in windows)  # the window proposals, as before
    coarse = [_iou(h["box"], truth["box"][int(h["image"].split("=")[1])]) for h in windows]
    print("propagated IoU, windows:", np.round(coarse, 3), "refined:", np.round(overlaps, 3))
    assert np.mean(overlaps) > np.mean(coarse), (coarse, overlaps)


def test_the_collection_order_puts_frames_by_number_at_their_video_s_place():
    names = ["b.jpg", "clip.mp4#frame=10", "clip.mp4#frame=9", "clip.mp4.jpg", "clip.mp4 b.jpg", "a.jpg",
             "clip.mp4#frame=100", "clip.mp4#frame=0", "c.MOV#frame=2", "c.MOV#frame=11", "d#e.jpg", "clip.mp4#frame=009"]
    assert sorted(names, key=order_key) == [
        "a.jpg", "b.jpg", "c.MOV#frame=2", "c.MOV#frame=11", "clip.mp4#frame=0", "clip.mp4#frame=9",
        "clip.mp4#frame=009", "clip.mp4#frame=10", "clip.mp4#frame=100", "clip.mp4 b.jpg", "clip.mp4.jpg", "d#e.jpg"]
    # the key reads a frame name exactly as split_frame_name does (it skips the regular expression)
    for name in names + [".mp4#frame=3", "g.txt#frame=3", "h.mp4#frame=1#frame=2", "i.webm#frame=٣", "j.mp4#frame=²",
                         "k.mp4x#frame=1", "f.mp4#frame=3.jpg", "c.mov#frame="]:
        assert (order_key(name) != name) == (split_frame_name(name) is not None), name


def test_propagation_progress_never_goes_back_when_second_looks_grow_the_refinement(indexed_clips, monkeypatch):
    """On a CPU refinement reports every hit's first look (done == total), then grows its total
    for the second looks: the propagation bar must not jump back."""
    from dasr_annotator.app.cli.cmd_search import open_searcher
    from dasr_annotator.engine.search.propagate import propagate

    folder, truth, _ = indexed_clips
    searcher = open_searcher(Project.open(folder), "cpu")

    def refine_as_a_cpu_does(hits, examples, windows, progress, **kw):
        for done, of in ((2, 4), (4, 4), (4, 6), (5, 6), (6, 6)):  # two second looks follow
            progress(done, of)
        return hits

    monkeypatch.setattr(searcher, "refine", refine_as_a_cpu_does)
    seen = []
    hits = propagate(searcher, "box.mp4#frame=4", Box(*truth["box"][4]), 0.5, 4,
                     progress=lambda done, total: seen.append((done, total)))
    assert len(hits) == 4 and seen[-1] == (8, 8)
    assert all(b[0] >= a[0] and b[0] <= b[1] for a, b in zip(seen, seen[1:])), seen
