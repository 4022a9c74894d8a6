"""Generate a photo folder full of awkward inputs, as real bytes, with what each should do.

`make_awkward_folder(root) -> {relative POSIX name: Expectation}` writes every case under
`root`. Non-UTF-8 names appear as the str `os.fsdecode` gives (surrogate escapes), which is also
what `os.walk` and `pathlib` return for them. Generators for the two big "bombs" are separate
(`write_png_bomb`, `write_huge_jpeg`) so memory tests can call them on their own.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 40_000
# Orientation cases: how the image looks to a person (after EXIF orientation).
SHOWN_SIZE = (60, 40)
RED, GREEN, GREY, WHITE = (220, 20, 20), (20, 200, 20), (128, 128, 128), (255, 255, 255)
# Inverse of the EXIF transpose: how to store a picture so that orientation k shows it upright.
_STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Expectation:
    """What the loader and the indexer must do with one entry.

    kind: "image" (loads), "bad" (refused: ImageError whose reason contains `reason`, and an
    index lists it under "skipped"), "ignored" (not an image file: a scan must not list it).
    size: oriented (width, height) of a loadable image. pixels: {(x, y) in original oriented
    pixels: expected RGB}, compared with a tolerance for lossy formats.
    """

    kind: str
    reason: str = ""
    size: tuple[int, int] | None = None
    pixels: dict = field(default_factory=dict)

    @property
    def loads(self) -> bool:
        return self.kind == "image"


def make_awkward_folder(root: str | os.PathLike) -> dict[str, Expectation]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Expectation] = {}

    def put(name: str | bytes, data: bytes, expectation: Expectation) -> None:
        rel = os.fsdecode(name)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        cases[rel] = expectation

    good = _jpeg(_noise(64, 48, seed=1))
    put("good.jpg", good, Expectation("image", size=(64, 48)))
    put("UPPER CASE.JPG", good, Expectation("image", size=(64, 48)))
    put("name with  spaces.jpeg", good, Expectation("image", size=(64, 48)))
    put("ünïcødé 写真 📷.jpg", good, Expectation("image", size=(64, 48)))
    put(b"latin1-caf\xe9.jpg", good, Expectation("image", size=(64, 48)))
    put("nested/deeper/inner.png", _png(_noise(30, 20, seed=2)), Expectation("image", size=(30, 20)))
    put("mislabelled-png.jpg", _png(_solid(16, 12, GREEN)), Expectation("image", size=(16, 12), pixels={(8, 6): GREEN}))
    put("one-pixel.png", _png(_solid(1, 1, RED)), Expectation("image", size=(1, 1), pixels={(0, 0): RED}))
    put("grayscale.jpg", _jpeg(Image.new("L", (20, 10), 90)), Expectation("image", size=(20, 10), pixels={(5, 5): (90, 90, 90)}))
    put("cmyk.jpg", _jpeg(_solid(24, 16, RED).convert("CMYK")), Expectation("image", size=(24, 16), pixels={(12, 8): RED}))
    put("gray-16bit.png", _png16_gray(), Expectation("image", size=(3, 1), pixels={(0, 0): (0, 0, 0), (1, 0): (100, 100, 100), (2, 0): WHITE}))
    put("rgb-16bit.png", _png16_rgb(), Expectation("image", size=(2, 2), pixels={(0, 0): (200, 50, 255)}))
    put("gray-16bit.tif", _tiff16_gray(), Expectation("image", size=(3, 1), pixels={(1, 0): (100, 100, 100)}))
    put("rgba.png", _png(_half_transparent("RGBA")), Expectation("image", size=(20, 10), pixels={(2, 5): WHITE, (17, 5): GREEN}))
    put("gray-alpha.png", _png(_half_transparent("LA")), Expectation("image", size=(20, 10), pixels={(2, 5): WHITE, (17, 5): (60, 60, 60)}))
    put("animated.gif", _two_frame_gif(), Expectation("image", size=(10, 8), pixels={(5, 4): RED}))
    put("transparent-palette.gif", _transparent_gif(), Expectation("image", size=(10, 8), pixels={(1, 4): WHITE, (8, 4): RED}))
    put("plain.bmp", _encode(_solid(9, 7, GREEN), "BMP"), Expectation("image", size=(9, 7), pixels={(4, 3): GREEN}))
    put("lossless.webp", _encode(_solid(9, 7, RED), "WEBP", lossless=True), Expectation("image", size=(9, 7), pixels={(4, 3): RED}))
    for k in range(1, 9):
        put(f"orientation/exif-{k}.jpg", _oriented_jpeg(k), Expectation("image", size=SHOWN_SIZE, pixels=_ORIENTATION_MARKERS))

    put("truncated.jpg", good[: len(good) * 2 // 3], Expectation("bad", reason="truncated"))
    put("text-named.jpg", b"this is a text file, not a photo\n", Expectation("bad", reason="not a recognised image"))
    put("empty.png", b"", Expectation("bad", reason="empty"))
    put("garbage-after-header.png", _png(_noise(16, 16, seed=3))[:60] + bytes(range(256)) * 4, Expectation("bad", reason="image"))
    put("photoshop.psd.jpg", b"8BPS" + bytes(60), Expectation("bad", reason="not a recognised image"))
    bomb = root / "bomb.png"
    write_png_bomb(bomb)
    cases["bomb.png"] = Expectation("bad", reason="too large")

    os.symlink("does-not-exist.jpg", root / "dangling-link.jpg")
    cases["dangling-link.jpg"] = Expectation("bad", reason="not found")
    os.symlink(".", root / "loop", target_is_directory=True)  # a folder that contains itself
    cases["loop"] = Expectation("ignored")
    (root / "folder.jpg").mkdir()
    cases["folder.jpg"] = Expectation("ignored")
    put("notes.txt", b"not an image name\n", Expectation("ignored"))
    return cases


def write_png_bomb(path: str | os.PathLike, side: int = BOMB_SIDE) -> None:
    """A valid 1-bit side x side PNG of about 200 kB: zlib-compressed zero rows, streamed."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_chunk = 1000
    parts = []
    for start in range(0, side, rows_per_chunk):
        parts.append(compressor.compress(row * min(rows_per_chunk, side - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    Path(path).write_bytes(_png_signature_and_chunks(header, b"".join(parts)))


def write_huge_jpeg(path: str | os.PathLike, side: int = BOMB_SIDE) -> None:
    """A valid grey side x side baseline JPEG (side a multiple of 8) of side^2/256 bytes.

    Hand-made: one Huffman code "0" for both "DC difference 0" and "end of block", so every
    8x8 block is two zero bits and the scan is all zero bytes. Decoders must really walk all
    blocks, which makes this a fair test of reduced (1/8) decoding.
    """
    assert side % 32 == 0, "whole bytes of 4 blocks per row"
    quant = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, side, side, 1) + b"\x01\x11\x00"
    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    huffman = b"\xff\xc4" + struct.pack(">H", 2 + 2 * 18) + b"\x00" + one_code + b"\x10" + one_code
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00"
    blocks = (side // 8) ** 2
    with open(path, "wb") as out:
        out.write(b"\xff\xd8" + quant + frame + huffman + scan)
        chunk = bytes(1 << 20)
        remaining = blocks // 4
        while remaining:
            n = min(remaining, len(chunk))
            out.write(chunk[:n])
            remaining -= n
        out.write(b"\xff\xd9")


# How every orientation case must look: red top-left corner, green top-right, grey elsewhere.
_ORIENTATION_MARKERS = {(3, 3): RED, (SHOWN_SIZE[0] - 4, 3): GREEN, (SHOWN_SIZE[0] // 2, SHOWN_SIZE[1] - 4): GREY}


def shown_orientation_picture() -> Image.Image:
    picture = Image.new("RGB", SHOWN_SIZE, GREY)
    picture.paste(RED, (0, 0, 12, 12))
    picture.paste(GREEN, (SHOWN_SIZE[0] - 12, 0, SHOWN_SIZE[0], 12))
    return picture


def _oriented_jpeg(orientation: int) -> bytes:
    stored = shown_orientation_picture()
    if _STORE_FOR_ORIENTATION[orientation] is not None:
        stored = stored.transpose(_STORE_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _solid(w: int, h: int, colour) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def _half_transparent(mode: str) -> Image.Image:
    """Left half: fully transparent black; right half: opaque colour."""
    colour = GREEN if mode == "RGBA" else 60
    clear = (0, 0, 0, 0) if mode == "RGBA" else (0, 0)
    image = Image.new(mode, (20, 10), clear)
    image.paste(colour + (255,) if mode == "RGBA" else (colour, 255), (10, 0, 20, 10))
    return image


def _two_frame_gif() -> bytes:
    frames = [_solid(10, 8, c).convert("P", palette=Image.Palette.ADAPTIVE) for c in (RED, (20, 20, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _transparent_gif() -> bytes:
    image = Image.new("P", (10, 8), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    image.paste(1, (5, 0, 10, 8))
    return _encode(image, "GIF", transparency=0)


def _png16_gray() -> bytes:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    return _png_signature_and_chunks(struct.pack(">IIBBBBB", 3, 1, 16, 0, 0, 0, 0), zlib.compress(rows))


def _png16_rgb() -> bytes:
    pixel = np.array([51400, 12850, 65535], dtype=">u2")  # high bytes 200, 50, 255
    row = b"\x00" + np.tile(pixel, 2).tobytes()
    return _png_signature_and_chunks(struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0), zlib.compress(row * 2))


def _tiff16_gray() -> bytes:
    image = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    return _encode(image, "TIFF")


def _png_signature_and_chunks(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    return _encode(image, "JPEG", quality=92)


def _png(image: Image.Image) -> bytes:
    return _encode(image, "PNG")


@contextmanager
def read_only_folder(path: str | os.PathLike):
    """Make `path` refuse new entries for the duration, even for root (who ignores mode bits:
    there the immutable attribute is used). Skips the calling test where neither works."""
    import pytest

    path = Path(path)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a read-only folder")
    else:
        old_mode = path.stat().st_mode & 0o777
        os.chmod(path, 0o555)
    try:
        try:
            (path / ".probe").touch()
        except OSError:
            pass
        else:
            (path / ".probe").unlink()
            pytest.skip("this file system lets us write into a read-only folder")
        yield path
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            os.chmod(path, old_mode)
