"""Loading photos as oriented RGB arrays, safely.

Every image the engine or the GUI reads goes through `load_image` / `image_size`, so this is
the one place that deals with EXIF orientation, odd pixel modes (CMYK, 16 bit, palette, alpha),
corrupt or truncated files and decompression bombs. Anything unreadable raises `ImageError`
whose `reason` is short, says what is wrong with the file, and never includes the path (callers
know the path; names may not even be valid UTF-8).

Decisions:
- Transparent pixels are composited on white (a dark logo on a transparent background stays
  visible; dropping alpha would often turn the background black).
- Truncated files are refused, not half-loaded: a grey block where the data stopped would
  produce fake regions, and Pillow's switch for loading them is process-wide.
- Bombs: Pillow's own header check is raised to `HEADER_PIXEL_LIMIT`; our check counts the
  pixels that will actually be decoded. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (`draft`)
  when `max_side` allows, so a 40000 x 40000 JPEG loads reduced; any decode larger than
  `MAX_DECODE_PIXELS` is refused with the size in the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Largest pixel buffer we are willing to decode (about 450 MB as RGB).
MAX_DECODE_PIXELS = 150_000_000
# A JPEG decoded at 1/8 scale stays under MAX_DECODE_PIXELS up to this header size.
HEADER_PIXEL_LIMIT = MAX_DECODE_PIXELS * 64
# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that, judging by the header
# alone; raise it to our header limit so it stays a backstop and our own check decides.
Image.MAX_IMAGE_PIXELS = HEADER_PIXEL_LIMIT

# Formats Pillow may identify; others (EPS, PSD, ICO, ...) are refused even if renamed.
_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
_JPEG_FORMATS = ("JPEG", "MPO")  # multi-picture camera files open through the JPEG plugin

# EXIF orientation -> the transpose that shows the image as a person sees it
# (the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_WHITE = 255


class ImageError(Exception):
    """An image that cannot be used; `reason` is shown to the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class LoadedImage:
    """Pixels as a person sees them, possibly reduced.

    `width`/`height` are the ORIGINAL oriented size; `rgb` is `scale` times that (rounded),
    so original coordinates = rgb coordinates / scale.
    """

    rgb: np.ndarray  # H x W x 3, uint8, C-contiguous
    width: int
    height: int
    scale: float = 1.0


_SEPARATORS = os.sep + (os.altsep or "")


def name_suffix(path: str | bytes | os.PathLike) -> str:
    """`Path(path).suffix.lower()`: the last dot and what follows it in the file name, lower case
    ("" for none, a leading dot or a trailing one), without making a Path: a scan asks it for
    every file of the folder (4x faster on 100k names)."""
    name = os.fsdecode(path).rstrip(_SEPARATORS)
    for sep in _SEPARATORS:
        name = name.rpartition(sep)[2]
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def is_image_name(path: str | bytes | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return name_suffix(path) in _IMAGE_SUFFIXES


_IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)


def image_size(path: str | bytes | os.PathLike) -> tuple[int, int]:
    """Oriented (width, height) read from the header, without decoding pixels. A frame of a
    video (`clip.mp4#frame=N`, engine/store/video.py) has its video's shown size."""
    if (frame := _video_frame(path)) is not None:
        from dasr_annotator.engine.store.video import video_frame_size

        return video_frame_size(frame.video, frame.frame)
    with _open_file(path) as fp:
        with _guarded():
            image = _identify(fp)
            return _oriented_size(image.size, _orientation(image))


def load_image(path: str | bytes | os.PathLike, max_side: int | None = None) -> LoadedImage:
    """Decode `path` to RGB, EXIF-oriented, reduced so max(H, W) <= max_side when given. A frame
    of a video (`clip.mp4#frame=N`) is decoded from the video, rotated as the video is shown."""
    if (frame := _video_frame(path)) is not None:
        from dasr_annotator.engine.store.video import load_video_frame

        return load_video_frame(frame.video, frame.frame, max_side=max_side)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    with _open_file(path) as fp:
        with _guarded():
            image = _identify(fp)
            orientation = _orientation(image)
            raw_w, raw_h = image.size
            width, height = _oriented_size(image.size, orientation)
            scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
            target = (max(1, round(raw_w * scale)), max(1, round(raw_h * scale)))
            if image.format in _JPEG_FORMATS and scale < 1.0:
                image.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale, still >= target
            decoded = image.size[0] * image.size[1]
            if decoded > MAX_DECODE_PIXELS:
                raise ImageError(_too_large(width, height, max_side))
            image.load()
            pixels = _to_rgb_or_l(image)
            if pixels.size != target:
                pixels = pixels.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
            if orientation in _ORIENTATION_TRANSPOSE:
                pixels = pixels.transpose(_ORIENTATION_TRANSPOSE[orientation])
            if pixels.mode == "L":
                pixels = pixels.convert("RGB")
            rgb = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
    return LoadedImage(rgb=rgb, width=width, height=height, scale=scale)


def _video_frame(path):
    """The video frame `path` names, or None for a file of its own (video.py is imported only
    when a name looks like a frame, so photo-only work never loads the video decoder)."""
    if "#frame=" not in os.fsdecode(path):
        return None
    from dasr_annotator.engine.store.video import frame_of

    return frame_of(path)


class _open_file:
    """Open for reading, turning OS errors into ImageError. Once open, the file may vanish
    from the folder without affecting the read (POSIX keeps the inode alive)."""

    def __init__(self, path):
        self._path = path
        self._fp = None

    def __enter__(self):
        try:
            self._fp = open(self._path, "rb")  # noqa: SIM115 - closed in __exit__
            size = os.fstat(self._fp.fileno()).st_size
        except FileNotFoundError:
            raise ImageError("file not found (moved or deleted?)") from None
        except IsADirectoryError:
            raise ImageError("is a folder, not an image file") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        except OSError as exc:
            raise ImageError(f"cannot read the file: {exc.strerror or exc}") from None
        except ValueError:  # NUL byte, or a lone surrogate that names no file on this system
            raise ImageError("not a valid file name on this system") from None
        if size == 0:
            self._fp.close()
            raise ImageError("empty file (0 bytes)")
        return self._fp

    def __exit__(self, *exc_info):
        self._fp.close()
        return False


class _guarded:
    """Map whatever Pillow or the OS raises while decoding to an ImageError with a reason."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (ImageError, KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ImageError(f"image too large to open safely ({exc})") from None
        if isinstance(exc, UnidentifiedImageError):
            raise ImageError("not a recognised image format (or an unsupported one)") from None
        if isinstance(exc, MemoryError):
            raise ImageError("not enough memory to decode this image") from None
        if isinstance(exc, OSError) and "truncated" in str(exc):
            raise ImageError("truncated image file (incomplete download or copy?)") from None
        if isinstance(exc, Exception):
            detail = str(exc) or type(exc).__name__
            raise ImageError(f"corrupt or unsupported image data: {detail}") from None
        return False


def _identify(fp) -> Image.Image:
    image = Image.open(fp, formats=_FORMATS)
    if image.size[0] < 1 or image.size[1] < 1:
        raise ImageError("image has no pixels (zero width or height)")
    return image


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1-8; 1 when absent or unreadable (broken EXIF must not hide a photo)."""
    try:
        if image.format == "PNG":  # PngImageFile.getexif() decodes all pixels to look past IDAT
            exif = Image.Exif()
            if image.info.get("exif"):
                exif.load(image.info["exif"])
        else:
            exif = image.getexif()
        value = exif.get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "as stored"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _too_large(width: int, height: int, max_side: int | None) -> str:
    megapixels = width * height / 1e6
    limit = MAX_DECODE_PIXELS / 1e6
    how = "" if max_side is not None else " at full size"
    return f"image too large: {width} x {height} ({megapixels:.0f} megapixels) cannot be decoded{how} within the {limit:.0f} megapixel limit"


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    """8-bit "RGB" or "L": 16-bit scaled (not clipped), alpha composited on white."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(_scaled_to_8bit(values, 65535.0))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        full_scale = 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0
        return Image.fromarray(_scaled_to_8bit(np.nan_to_num(values), full_scale))
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if mode in ("LA", "La"):
        la = image.convert("LA")
        background = Image.new("L", la.size, _WHITE)
        background.paste(la.getchannel("L"), mask=la.getchannel("A"))
        return background
    if mode in ("RGBA", "RGBa", "PA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (_WHITE, _WHITE, _WHITE))
        background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, I;16 variants Pillow converts itself


def _scaled_to_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    scaled = np.clip(values, 0.0, full_scale) * (255.0 / full_scale)
    return np.rint(scaled).astype(np.uint8)
