"""Replaces PyInstaller's QtGui hook: the same Qt dependencies, but only the plugins the app uses.

The stock hook collects every plugin of every QtGui plugin type (Wayland, EGLFS, VNC, the GTK
theme, the PDF image format...) and then everything those plugins link. Filtering here, before
PyInstaller's binary dependency scan, keeps their libraries out of the bundle too.
"""
from pathlib import Path

from PyInstaller.utils.hooks.qt import add_qt6_dependencies

# plugin type -> plugin file stems to keep; None keeps every plugin of that type.
KEPT_PLUGINS = {
    # offscreen: tests and smoke checks; xcb: X11 desktops (and Wayland via XWayland); minimal: debugging.
    "platforms": {"libqoffscreen", "libqxcb", "libqminimal"},
    # Image formats Qt may be asked to read; the PDF one would drag in QtPdf.
    "imageformats": None,
    # SVG icons (resources/icons) render crisply at any size through the SVG icon engine.
    "iconengines": None,
    # Compose/IBus input, so category names can be typed with dead keys and input methods (not the
    # virtual keyboard: it needs QtQuick).
    "platforminputcontexts": {"libcomposeplatforminputcontextplugin", "libibusplatforminputcontextplugin"},
}
DROPPED_FILES = {"libqpdf"}


def _kept(src: str) -> bool:
    path = Path(src)
    plugin_type = path.parent.name
    if plugin_type not in KEPT_PLUGINS or path.name.split(".")[0] in DROPPED_FILES:
        return False
    wanted = KEPT_PLUGINS[plugin_type]
    return wanted is None or path.name.split(".")[0] in wanted


hiddenimports, binaries, datas = add_qt6_dependencies(__file__)
# Plugin entries have a destination under .../plugins/<type>; everything else is a Qt library.
binaries = [(src, dest) for src, dest in binaries if "plugins" not in Path(dest).parts or _kept(src)]
