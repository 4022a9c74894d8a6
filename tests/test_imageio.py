"""engine/imageio.py on real, generated awkward files: orientation, odd modes, damage, bombs."""
from __future__ import annotations

import errno
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, JpegImagePlugin

from dasr_annotator.engine.store import imageio
from dasr_annotator.engine.store.imageio import ImageError, LoadedImage, image_size, is_image_name, load_image

sys.path.insert(0, str(Path(__file__).parent))
import awkward_files  # noqa: E402 - test helper next to this file

LOSSY_TOLERANCE = 40  # JPEG/CMYK round trips of flat colours
EXACT_TOLERANCE = 2


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    root = tmp_path_factory.mktemp("awkward")
    return root, awkward_files.make_awkward_folder(root)


def _close(actual, expected, tolerance) -> bool:
    return max(abs(int(a) - int(b)) for a, b in zip(actual, expected)) <= tolerance


def test_image_names():
    assert is_image_name("a/b/photo.JPG") and is_image_name(Path("x.tiff")) and is_image_name(b"caf\xe9.webp")
    assert not is_image_name("notes.txt") and not is_image_name("photo.jpg.part") and not is_image_name("jpg")
    assert all(ext.startswith(".") and ext == ext.lower() for ext in imageio.IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"} <= set(imageio.IMAGE_EXTENSIONS)


AWKWARD_NAMES = ["IMG_0001.JPG", "holiday.2019.final.jpeg", "a.b.c.Png", ".jpg", "photo.", "photo..jpg", "jpg",
                 "dir.with.dots/photo", "dir.jpg/notes.txt", "dir/sub.d/Clip.MOV", "clip.mp4#frame=12",
                 "photo.jpg.part", "photo.tar.gz", "..", ".hidden.webp", "x/", "trailing.gif/", "",
                 "caf\udce9.JPG", "spaces in name .TIFF"]


def test_name_suffix_is_the_paths_suffix_and_decides_what_is_a_photo_or_a_video(tmp_path):
    """The scan asks every file name whether it is a photo or a video (is_image_name,
    is_video_name) without making a Path; the answer is the Path's."""
    from dasr_annotator.engine.store.collection import scan_images
    from dasr_annotator.engine.store.video import VIDEO_EXTENSIONS, is_video_name

    for name in AWKWARD_NAMES:
        assert imageio.name_suffix(name) == Path(name).suffix.lower(), name
        assert imageio.name_suffix(os.fsencode(name)) == Path(name).suffix.lower(), name
        assert is_image_name(name) == (Path(name).suffix.lower() in imageio.IMAGE_EXTENSIONS), name
        assert is_video_name(name) == (Path(name).suffix.lower() in VIDEO_EXTENSIONS), name
    assert is_video_name("dir/sub.d/Clip.MOV") and not is_video_name("clip.mp4#frame=12")

    for name in ("IMG_0001.JPG", "holiday.2019.final.jpeg", "a.b.c.Png", ".jpg", "photo.", "photo..jpg",
                 "notes.txt", ".hidden.webp", "spaces in name .TIFF"):
        (tmp_path / name).write_bytes(b"")  # scanning lists names; nothing is read
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "dir.jpg" / "inside.Gif").write_bytes(b"")
    assert scan_images(tmp_path).files == sorted(["IMG_0001.JPG", "holiday.2019.final.jpeg", "a.b.c.Png",
                                                  "photo..jpg", ".hidden.webp", "spaces in name .TIFF",
                                                  "dir.jpg/inside.Gif"])


def test_every_loadable_awkward_image_loads_with_its_size_and_colours(awkward):
    root, cases = awkward
    failures = []
    for name, expected in cases.items():
        if not expected.loads:
            continue
        image = load_image(root / name)
        assert isinstance(image, LoadedImage)
        rgb = image.rgb
        if not (rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous):
            failures.append(f"{name}: array {rgb.dtype} {rgb.shape}")
        if (image.width, image.height) != expected.size or rgb.shape[:2] != expected.size[::-1] or image.scale != 1.0:
            failures.append(f"{name}: size {(image.width, image.height)} array {rgb.shape}, want {expected.size}")
        if image_size(root / name) != expected.size:
            failures.append(f"{name}: image_size {image_size(root / name)}, want {expected.size}")
        tolerance = LOSSY_TOLERANCE if name.lower().endswith((".jpg", ".jpeg")) else EXACT_TOLERANCE
        for (x, y), colour in expected.pixels.items():
            if not _close(rgb[y, x], colour, tolerance):
                failures.append(f"{name}: pixel {(x, y)} is {tuple(rgb[y, x])}, want {colour}")
    assert not failures, "\n".join(failures)


def test_every_bad_awkward_file_is_refused_with_a_reason(awkward):
    root, cases = awkward
    failures = []
    for name, expected in cases.items():
        if expected.kind != "bad":
            continue
        try:
            load_image(root / name, max_side=512)
        except ImageError as error:
            if expected.reason not in error.reason or Path(name).name in error.reason:
                failures.append(f"{name}: reason {error.reason!r}, want it to contain {expected.reason!r} and no path")
        else:
            failures.append(f"{name}: loaded, want refusal ({expected.reason})")
    assert not failures, "\n".join(failures)


def test_folders_are_refused_not_crashed_on(awkward):
    root, _ = awkward
    with pytest.raises(ImageError, match="folder"):
        load_image(root / "folder.jpg")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_and_puts_the_corner_where_a_person_sees_it(awkward, orientation):
    root, cases = awkward
    name = f"orientation/exif-{orientation}.jpg"
    image = load_image(root / name)
    with Image.open(root / name) as stored:
        reference = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert np.array_equal(image.rgb, reference)
    assert image_size(root / name) == awkward_files.SHOWN_SIZE
    # Reduced: the same corners, at scaled coordinates.
    half = load_image(root / name, max_side=awkward_files.SHOWN_SIZE[0] // 2)
    assert (half.width, half.height) == awkward_files.SHOWN_SIZE and half.scale == pytest.approx(0.5)
    assert half.rgb.shape == (awkward_files.SHOWN_SIZE[1] // 2, awkward_files.SHOWN_SIZE[0] // 2, 3)
    for (x, y), colour in cases[name].pixels.items():
        assert _close(half.rgb[int(y * half.scale), int(x * half.scale)], colour, LOSSY_TOLERANCE)


def test_max_side_bounds_the_array_and_scale_maps_back(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 120), (10, 20, 30)).save(path)
    for max_side, shape in ((100, (40, 100, 3)), (299, (120, 299, 3)), (300, (120, 300, 3)), (5000, (120, 300, 3))):
        image = load_image(path, max_side=max_side)
        assert image.rgb.shape == shape and (image.width, image.height) == (300, 120)
        assert image.scale == pytest.approx(shape[1] / 300) and image.scale <= 1.0
    with pytest.raises(ValueError):
        load_image(path, max_side=0)


def test_sixteen_bit_is_scaled_not_clipped(awkward):
    root, _ = awkward
    values = load_image(root / "gray-16bit.png").rgb[0, :, 0]
    assert list(values) == [0, 100, 255]  # a clip to 8 bit would read 255 for the middle one


def test_jpeg_is_decoded_reduced_when_max_side_allows(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (200, 100, 50)).save(path, quality=90)
    decoded_sizes = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = real_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    image = load_image(path, max_side=200)
    assert image.rgb.shape == (150, 200, 3) and (image.width, image.height) == (1600, 1200)
    assert decoded_sizes == [(200, 150)], "a 1/8 decode fits 200 x 150 exactly"
    assert _close(image.rgb[75, 100], (200, 100, 50), LOSSY_TOLERANCE)


def test_loading_a_small_jpeg_is_fast(tmp_path):
    path = tmp_path / "vga.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path, quality=85)
    load_image(path, max_side=512)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        load_image(path, max_side=512)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.03, f"median {statistics.median(times) * 1e3:.1f} ms"


_BOMB_SCRIPT = """
import json, resource, sys, warnings
sys.path.insert(0, sys.argv[1])
import awkward_files
from dasr_annotator.engine.store.imageio import ImageError, load_image
warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
awkward_files.write_png_bomb(sys.argv[2] + "/bomb.png")
awkward_files.write_huge_jpeg(sys.argv[2] + "/huge.jpg")
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"base_mb": peak_mb()}
for key, name, max_side in (("png", "bomb.png", 512), ("jpeg_full", "huge.jpg", None), ("jpeg_reduced", "huge.jpg", 512)):
    try:
        image = load_image(sys.argv[2] + "/" + name, max_side=max_side)
        out[key] = {"shape": list(image.rgb.shape), "size": [image.width, image.height], "mean": float(image.rgb.mean())}
    except ImageError as error:
        out[key] = {"reason": error.reason}
    out[key]["peak_mb"] = peak_mb()
print(json.dumps(out))
"""


def test_decompression_bombs_keep_memory_bounded_and_give_reasons(tmp_path):
    # A separate process, so its peak RSS measures only this work (Pillow allocates outside
    # tracemalloc's reach). Without the guards each of these needs 1.6 GB or more.
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(Path(__file__).parent), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    side = awkward_files.BOMB_SIDE
    assert "too large" in result["png"]["reason"] and f"{side} x {side}" in result["png"]["reason"]
    assert "too large" in result["jpeg_full"]["reason"]
    reduced = result["jpeg_reduced"]
    assert reduced["shape"] == [512, 512, 3] and reduced["size"] == [side, side]
    assert reduced["mean"] == pytest.approx(128, abs=2)
    assert result["jpeg_reduced"]["peak_mb"] - result["base_mb"] < 250, result


def test_a_file_that_vanishes_after_opening_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "going.png"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(path)
    real_open = imageio.Image.open

    def open_then_delete(fp, *args, **kwargs):
        os.unlink(path)  # another program deletes it while we read
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(imageio.Image, "open", open_then_delete)
    assert load_image(path).rgb.shape == (6, 8, 3)
    with pytest.raises(ImageError, match="not found"):
        load_image(path)


def test_read_errors_become_image_errors(tmp_path, monkeypatch):
    path = tmp_path / "disk.png"
    Image.new("RGB", (8, 6)).save(path)

    def failing_open(fp, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(imageio.Image, "open", failing_open)
    with pytest.raises(ImageError, match="Input/output error"):
        load_image(path)


def test_bytes_paths_with_non_utf8_names_load(awkward):
    root, _ = awkward
    raw = os.fsencode(root) + b"/latin1-caf\xe9.jpg"
    assert load_image(raw).rgb.shape == (48, 64, 3)
    assert image_size(raw) == (64, 48)


_SEED_FILES = {}


def _seed(fmt: str) -> bytes:
    if fmt not in _SEED_FILES:
        buffer = io.BytesIO()
        rng = np.random.default_rng(5)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, fmt)
        _SEED_FILES[fmt] = buffer.getvalue()
    return _SEED_FILES[fmt]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_damaged_files_never_raise_anything_but_image_error(tmp_path, fmt, cut, flips):
    data = bytearray(_seed(fmt)[: max(1, int(len(_seed(fmt)) * cut))])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image = load_image(path, max_side=64)
    except ImageError as error:
        assert error.reason
    else:
        assert image.rgb.dtype == np.uint8 and image.rgb.shape[2] == 3 and max(image.rgb.shape[:2]) <= 64


@pytest.mark.parametrize("bad_name", ["nul\x00byte.jpg", "lone\ud800surrogate.jpg"])
def test_impossible_file_names_are_image_errors(tmp_path, bad_name):
    for read in (load_image, image_size):
        with pytest.raises(ImageError, match="not a valid file name"):
            read(str(tmp_path / bad_name))
