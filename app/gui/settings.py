"""User preferences (with a schema) and the remembered window layout, both in QSettings.

Preferences are typed values with defaults and allowed choices; anything unreadable in the
settings file falls back to the default instead of crashing the start. The window layout is kept
apart, under a layout version: when the docks change shape between releases, bump
`LAYOUT_VERSION` and old saved layouts are ignored rather than restored wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from PySide6.QtCore import QByteArray, QSettings

LAYOUT_VERSION = 1
DEVICES = ("auto", "cpu", "cuda")
MODES = ("moments", "fast", "exact")


@dataclass
class Preferences:
    backbone: str = "efficientnet-lite0"
    device: str = "auto"  # "auto" picks the GPU when there is one
    mode: str = "moments"  # as engine.extractor.DEFAULT_MODE (settings stay free of torch)
    max_side: int = 512  # longest image side the extractor sees
    top_k: int = 100  # hits per search
    overlap_iou: float = 0.5  # a hit overlapping a same-category label this much counts as labelled
    feedback_every: int = 5  # re-rank the remaining hits after this many decisions (0: never)
    label_queries: bool = False  # a box searched with becomes a label at once (else on Ctrl+Enter)
    # propagating a label to neighbouring video frames (as `search --propagate SECONDS --propagate-fps F`)
    propagate_seconds: float = 2.0  # as engine.search.propagate.DEFAULT_SECONDS (settings stay free of the engine)
    propagate_fps: float = 10.0  # as engine.search.propagate.DEFAULT_FPS


_GROUP = "preferences"
_RANGES = {"max_side": (128, 2048), "top_k": (1, 10000), "overlap_iou": (0.05, 1.0), "feedback_every": (0, 100),
           "propagate_seconds": (0.1, 600.0), "propagate_fps": (0.1, 240.0)}


def load_preferences(settings: QSettings | None = None, backbones: tuple[str, ...] = ()) -> Preferences:
    settings = settings or QSettings()
    defaults = Preferences()
    values = {}
    settings.beginGroup(_GROUP)
    try:
        for f in fields(Preferences):
            default = getattr(defaults, f.name)
            values[f.name] = _checked(f.name, settings.value(f.name, default), default, backbones)
    finally:
        settings.endGroup()
    return Preferences(**values)


def save_preferences(prefs: Preferences, settings: QSettings | None = None) -> None:
    settings = settings or QSettings()
    settings.beginGroup(_GROUP)
    for f in fields(Preferences):
        settings.setValue(f.name, getattr(prefs, f.name))
    settings.endGroup()
    settings.sync()


def _checked(name: str, raw, default, backbones: tuple[str, ...]):
    """`raw` converted to the default's type and inside its range/choices, else the default."""
    if isinstance(default, bool):  # QSettings hands booleans back as "true"/"false" strings
        text = str(raw).strip().lower()
        return {"true": True, "1": True, "false": False, "0": False}.get(text, default)
    try:
        value = type(default)(raw)
    except (TypeError, ValueError):
        return default
    allowed = {"backbone": backbones, "device": DEVICES, "mode": MODES}.get(name)
    if allowed and value not in allowed:
        return default
    if name in _RANGES:
        low, high = _RANGES[name]
        if not low <= value <= high:
            return default
    return value


# ---- window layout --------------------------------------------------------------------------
def save_layout(geometry: QByteArray, state: QByteArray, settings: QSettings | None = None) -> None:
    settings = settings or QSettings()
    settings.setValue("layout/version", LAYOUT_VERSION)
    settings.setValue("layout/geometry", geometry)
    settings.setValue("layout/state", state)
    settings.sync()


def load_layout(settings: QSettings | None = None) -> tuple[QByteArray, QByteArray] | None:
    """(geometry, dock state) saved by this layout version, or None."""
    settings = settings or QSettings()
    try:
        version = int(settings.value("layout/version", 0))
    except (TypeError, ValueError):
        return None
    geometry, state = settings.value("layout/geometry"), settings.value("layout/state")
    if version != LAYOUT_VERSION or not isinstance(geometry, QByteArray) or not isinstance(state, QByteArray):
        return None
    return geometry, state


def recent_folder(settings: QSettings | None = None) -> str:
    return str((settings or QSettings()).value("recent/folder", ""))


def remember_folder(path: str, settings: QSettings | None = None) -> None:
    (settings or QSettings()).setValue("recent/folder", path)
