"""Before Qt starts: can its platform plugin load? If not, say what to install, not Qt's abort.

Qt aborts with "Could not load the Qt platform plugin ... Reinstalling the application may fix
this problem" when a system library its plugin links against is missing (on a bare Debian
desktop: libxcb-icccm4, libxcb-keysyms1, libxcb-cursor0). Reinstalling does not help: the
libraries come from the system's package manager. This check loads the plugin the way Qt will
(the dynamic loader, in this process) and, when that fails, names the system packages that
provide the missing libraries, for Debian/Ubuntu and for Fedora. Linux only: elsewhere the
wheels carry what they need. Imports no Qt module.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# soname -> (Debian/Ubuntu package, Fedora package), for the libraries Qt's xcb and wayland
# plugins (and Qt Gui under them) link against.
PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor"),
    "libwayland-egl.so.1": ("libwayland-egl1", "libwayland-egl"),
}
# What a desktop without them most often lacks; README's set-up section names the same line.
XCB_DEBIAN = "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0"
XCB_FEDORA = "xcb-util-cursor xcb-util-wm xcb-util-keysyms xcb-util-image xcb-util-renderutil libxkbcommon-x11"
EXIT_CODE = 2
_MISSING = re.compile(r"(lib[^\s:/]+\.so[.\d]*)\s*:")


@dataclass(frozen=True)
class PlatformProblem:
    message: str


def check(environ: dict | None = None) -> PlatformProblem | None:
    """None when Qt's platform plugin will load (or this cannot be told here), else the problem."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return None
    folders = _plugin_folders(env)
    if not folders:
        return None  # an unusual Qt layout (a frozen build): let Qt speak for itself
    names = _candidates(env)
    errors = []
    for name in names:
        plugin = _find_plugin(folders, name)
        if plugin is None:
            errors.append((name, None))
            continue
        try:
            ctypes.CDLL(str(plugin))
        except OSError as exc:
            errors.append((name, str(exc)))
            continue
        if name == "xcb" and not env.get("DISPLAY"):
            errors.append((name, "no X display"))
            continue
        return None
    return PlatformProblem(_describe(errors, folders))


def _plugin_folders(env) -> list[Path]:
    folders = [Path(p) for p in env.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    folders += [Path(p) / "platforms" for p in env.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    spec = importlib.util.find_spec("PySide6")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folders.append(Path(location) / "Qt" / "plugins" / "platforms")
    return [f for f in folders if f.is_dir()]


def _candidates(env) -> list[str]:
    """The platforms Qt will try, in its order."""
    asked = env.get("QT_QPA_PLATFORM", "")
    if asked:
        return [p.split(":")[0].strip() for p in asked.split(";") if p.strip()]
    if env.get("XDG_SESSION_TYPE") == "wayland" and env.get("WAYLAND_DISPLAY"):
        return ["wayland", "xcb"]
    return ["xcb"]


def _find_plugin(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        path = folder / f"libq{name}.so"
        if path.is_file():
            return path
    return None


def _available(folders: list[Path]) -> list[str]:
    found = {p.name[4:-3] for f in folders for p in f.glob("libq*.so")}
    return sorted(found)


def _missing_libraries(platform: str, error: str) -> list[str]:
    """The libraries named in the loader's error, and every other known one that will not load
    either (the loader stops at the first, the user should install them all in one go)."""
    named = [m for m in _MISSING.findall(error) if not m.startswith("libq")]
    missing = []
    for soname in [*named, *PACKAGES]:
        if soname in missing or (platform != "wayland" and soname.startswith("libwayland")):
            continue
        try:
            ctypes.CDLL(soname)
        except OSError:
            missing.append(soname)
    return missing


def _describe(errors: list[tuple[str, str | None]], folders: list[Path]) -> str:
    lines = []
    missing: list[str] = []
    for name, error in errors:
        if error is None:
            lines.append(f'The Qt platform "{name}" does not exist here (available: {", ".join(_available(folders))}).')
        elif error.startswith("no X display"):
            lines.append('The Qt platform "xcb" finds no X display (DISPLAY is not set): start the annotator '
                         "inside a desktop session (or over ssh -X).")
        else:
            lines.append(f'The Qt platform plugin "{name}" cannot load: {error}')
            missing += [m for m in _missing_libraries(name, error) if m not in missing]
    if missing:
        known = [m for m in missing if m in PACKAGES]
        unknown = [m for m in missing if m not in PACKAGES]
        lines.append(f"Missing system libraries: {' '.join(missing)}.")
        if known:
            debian = " ".join(dict.fromkeys(PACKAGES[m][0] for m in known))
            fedora = " ".join(dict.fromkeys(PACKAGES[m][1] for m in known))
            lines += ["Install them with the system's package manager, then start again:",
                      f"  Debian/Ubuntu:  sudo apt install {debian}",
                      f"  Fedora:         sudo dnf install {fedora}"]
        if unknown:
            lines.append(f"Find the package that provides {' '.join(unknown)} with `apt-file search NAME` "
                         "(Debian/Ubuntu) or `dnf provides '*/NAME'` (Fedora).")
        lines += ["Everything Qt needs for X11 on a bare desktop:",
                  f"  Debian/Ubuntu:  sudo apt install {XCB_DEBIAN}",
                  f"  Fedora:         sudo dnf install {XCB_FEDORA}",
                  "Reinstalling dasr-annotator does not help: these libraries come from the system."]
    lines.append("Headless work needs no window: see `dasr-annotator --help` for the index, search and "
                 "label commands.")
    return "\n".join(lines)
