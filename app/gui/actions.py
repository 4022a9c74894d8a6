"""Every user command in one typed table: text, menu, keys, icon, tip. Menus, toolbars and the
shortcut sheet are built from it, so they can never disagree."""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QIcon, QKeySequence

from dasr_annotator import resources
from dasr_annotator.engine.store.formats import FORMATS

MENUS = ("File", "Edit", "View", "Search", "Help")


@dataclass(frozen=True)
class ActionSpec:
    name: str
    text: str
    menu: str | None  # "File", or "File/Import" for a submenu; None: keyboard only (still in the shortcut sheet)
    keys: tuple[str, ...] = ()
    icon: str | None = None  # resources/icons/<icon>.svg
    tip: str = ""
    also: str = ""  # keys handled elsewhere, for the shortcut sheet (e.g. arrows in a list)


_MENU_TEXT = {"coco": "&COCO JSON…", "yolo": "&YOLO folder…", "voc": "Pascal &VOC folder…", "cvat": "CV&AT XML…",
              "labelme": "&labelme folder…"}

ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("open_folder", "&Open folder…", "File", ("Ctrl+O",), "open", "Open a photo folder"),
    ActionSpec("save", "&Save", "File", ("Ctrl+S",), "save", "Save the labels now (they autosave on every change)"),
    # File > Import and File > Export: one entry per label format (engine/store/formats)
    *(ActionSpec(f"import_{f.name}", _MENU_TEXT[f.name], "File/Import", (), "import",
                 f"Add the labels of a {f.title} {f.import_from}") for f in FORMATS.values()),
    *(ActionSpec(f"export_{f.name}", _MENU_TEXT[f.name], "File/Export", ("Ctrl+E",) if f.name == "coco" else (),
                 "export", f"Write the labels as a {f.title} {f.export_to}"
                 + (" (no scores or provenance)" if f.name in ("yolo", "voc") else "")) for f in FORMATS.values()),
    ActionSpec("settings", "Se&ttings…", "File", ("Ctrl+,",), "settings", "Device, backbone and search settings"),
    ActionSpec("quit", "&Quit", "File", ("Ctrl+Q",), None, "Close the annotator"),
    ActionSpec("undo", "&Undo", "Edit", ("Ctrl+Z",), "undo", "Undo the last edit"),
    ActionSpec("redo", "&Redo", "Edit", ("Ctrl+Shift+Z", "Ctrl+Y"), "redo", "Redo the edit undone last"),
    ActionSpec("label_box", "&Label drawn box", "Edit", ("Ctrl+Return",), "box",
               "Add the drawn box (or the box last searched with) as a label of the current category"),
    ActionSpec("delete", "&Delete selected", "Edit", ("Del",), "delete", "Delete the selected labels"),
    ActionSpec("prev_image", "&Previous image", "View", ("A",), None, "Show the previous photo"),
    ActionSpec("next_image", "&Next image", "View", ("D",), None, "Show the next photo"),
    ActionSpec("zoom_in", "Zoom &in", "View", ("Ctrl+=", "Ctrl++"), "zoom-in", "Zoom in", "Ctrl+wheel"),
    ActionSpec("zoom_out", "Zoom &out", "View", ("Ctrl+-",), "zoom-out", "Zoom out", "Ctrl+wheel"),
    ActionSpec("zoom_actual", "&Actual size", "View", ("Ctrl+0",), None, "One photo pixel per screen pixel"),
    ActionSpec("fit", "&Fit to window", "View", ("Ctrl+F",), "fit", "Show the whole photo"),
    ActionSpec("find_similar", "&Find similar", "Search", (), "find",
               "Find the drawn (or selected) box's object in the other photos", "Enter (after drawing a box)"),
    ActionSpec("find_photos_like", "Find &photos like this one", "Search", ("Ctrl+Shift+P",), "find",
               "Rank the other photos by how alike the whole photos are (no box needed; labels nothing)"),
    ActionSpec("find_more", "Find &more like these", "Search", ("Ctrl+Shift+F",), "find-more",
               "Search with every label of the current category as examples"),
    ActionSpec("propagate", "Propagate to neighbouring fra&mes", "Search", ("Ctrl+Shift+N",), "find",
               "Look for the selected label (or hit) of this video frame in the frames around it, nearest in time "
               "first: hits to review, nothing labelled until accepted"),
    ActionSpec("accept", "&Accept hit", "Search", ("Y",), "accept", "Accept the selected hits as labels"),
    ActionSpec("reject", "&Reject hit", "Search", ("N", "Backspace"), "reject", "Reject the selected hits"),
    ActionSpec("next_hit", "Ne&xt hit", "Search", ("J",), None, "Select the next hit", "arrows in the results"),
    ActionSpec("prev_hit", "Pre&vious hit", "Search", ("K",), None, "Select the previous hit", "arrows in the results"),
    ActionSpec("accept_above", "Accept all a&bove threshold", "Search", ("Ctrl+Shift+A",), "accept-all",
               "Accept every pending hit scoring at least the threshold"),
    ActionSpec("rerank", "Re-&rank with feedback", "Search", ("Ctrl+R",), "rerank",
               "Re-order the pending hits using the accepted (positive) and rejected (negative) ones"),
    ActionSpec("cancel_work", "&Cancel indexing", "Search", (), "cancel", "Stop indexing (it resumes next time)"),
    ActionSpec("shortcuts", "&Keyboard shortcuts", "Help", ("F1", "?"), "help", "Show every shortcut"),
)

CATEGORY_KEYS = tuple(str(n) for n in range(1, 10))  # number keys pick categories


def icon(name: str) -> QIcon:
    with resources.path_of(f"icons/{name}.svg") as path:
        return QIcon(str(path))


def create_actions(parent: QObject) -> dict[str, QAction]:
    actions = {}
    for spec in ACTIONS:
        action = QAction(spec.text, parent)
        action.setObjectName(spec.name)
        if spec.keys:
            action.setShortcuts([QKeySequence(k) for k in spec.keys])
            action.setShortcutContext(Qt.WindowShortcut)
        if spec.icon:
            action.setIcon(icon(spec.icon))
        keys = ", ".join(spec.keys)
        action.setToolTip(f"{spec.tip} ({keys})" if keys else spec.tip)
        action.setStatusTip(spec.tip)
        actions[spec.name] = action
    return actions


def shortcut_rows() -> list[tuple[str, str, str]]:
    """(menu, action, keys) for the shortcut sheet."""
    rows = []
    for spec in ACTIONS:
        keys = [QKeySequence(k).toString(QKeySequence.NativeText) for k in spec.keys]
        if spec.also:
            keys.append(spec.also)
        if keys:
            menu = (spec.menu or "").replace("/", " > ")
            rows.append((menu, spec.text.replace("&", "").rstrip("…"), ", ".join(keys)))
    rows.append(("Labels", "Pick category 1–9", "1 … 9"))
    rows.append(("Canvas", "Nudge the selected box", "arrows (Shift: 10 px)"))
    rows.append(("Canvas", "Pan", "Space+drag, middle or right drag"))
    return rows
