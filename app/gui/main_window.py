"""The main window: assembles the widgets, docks, menus and status bar, and wires them to the
document (labels, undo) and the controller (engine work). Search review lives in review.py.

Questions to the user (folder and file pickers, confirmations) and error display go through
small methods (`ask_folder`, `ask_open_path`, `ask_save_path`, `confirm`, `show_error`) that tests
replace.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox, QDockWidget, QFileDialog, QLabel, QMainWindow, QSizePolicy, QStackedWidget, QVBoxLayout, QWidget,
)

from dasr_annotator.app.gui import actions as action_table
from dasr_annotator.app.gui import settings as app_settings
from dasr_annotator.app.gui.controller import Controller
from dasr_annotator.app.gui.document import Change, Document
from dasr_annotator.app.gui.project_actions import ProjectActions
from dasr_annotator.app.gui.review import Review
from dasr_annotator.engine.store.collection import scan_images
from dasr_annotator.engine.store.formats import FORMATS
from dasr_annotator.engine.store.storage import DamagedFile, ProjectFileError, damaged_copy_path
from dasr_annotator.engine.store.video import order_key
from dasr_annotator.widgets import dialogs
from dasr_annotator.widgets.canvas import ImageCanvas
from dasr_annotator.widgets.file_list import THUMB_PX, FileListModel, FileListView
from dasr_annotator.widgets.label_panel import AnnotationTable, CategoryPanel, CategoryRow
from dasr_annotator.widgets.message_bar import MessageBar
from dasr_annotator.widgets.progress_panel import ProgressPanel
from dasr_annotator.widgets.result_grid import ResultPanel

log = logging.getLogger(__name__)

DISPLAY_MAX_SIDE = 2048  # the canvas shows photos reduced to this; boxes stay in original pixels
PHOTO_SHARE = 0.55  # on a narrow window the side panels shrink until the photo gets this much
SIDE_PANEL_MIN = 150


class FolderLister(QObject):
    """Lists a folder's photos on a thread of its own: a directory walk, no engine, so the photos
    show while the engine (torch, faiss: a minute on a cold disk) is still starting. The photos
    arrive in batches while the walk goes on (`batch`: the first folder at once, then at most
    every BATCH_S), then the whole sorted list (`listed`). Signals carry Python objects as they
    are (`object`): a `list` signal would copy 100k strings through Qt."""

    BATCH_S = 0.25
    batch = Signal(object, object, object)  # listing token, photo paths relative to the folder, frame -> seconds
    listed = Signal(object, object, object)  # listing token, every photo path (sorted), frame -> seconds

    def __init__(self, parent=None):
        super().__init__(parent)
        self._stop: threading.Event | None = None

    def start(self, folder: Path, token: object) -> None:
        self.stop()
        stop = self._stop = threading.Event()
        waiting: list[str] = []
        times: dict[str, float] = {}
        last = [None]

        def on_folder(files: list[str], frame_times: dict[str, float]) -> None:
            if stop.is_set():
                raise _Stopped()
            waiting.extend(files)
            times.update(frame_times)
            now = time.monotonic()
            if last[0] is None or now - last[0] >= self.BATCH_S:
                send()
                last[0] = now

        def send() -> None:
            if waiting and not stop.is_set():
                waiting.sort(key=order_key)  # here, not on the UI thread (the list merges it in order)
                self.batch.emit(token, list(waiting), dict(times))
                waiting.clear()
                times.clear()

        def walk():
            try:  # videos at the default sampling; the project may re-list
                scanned = scan_images(folder, on_folder=on_folder)
            except (OSError, _Stopped):
                return  # opening the project reports it
            send()
            if not stop.is_set():
                self.listed.emit(token, scanned.files, scanned.frame_times)

        threading.Thread(target=walk, name="list-photos", daemon=True).start()

    def stop(self) -> None:
        """Stop the walk in progress (its folder is no longer wanted)."""
        if self._stop is not None:
            self._stop.set()


class _Stopped(Exception):
    pass


class MainWindow(QMainWindow):
    def __init__(self, photos: Path | None = None, parent=None, prefs: app_settings.Preferences | None = None):
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("dasr-annotator")
        self.prefs = prefs or app_settings.load_preferences()  # backbone names are checked on use
        self.controller = Controller(self.prefs, self)
        self.document: Document | None = None
        self.current_image: str | None = None
        self.canvas_image: str | None = None  # the photo the canvas shows (lags while loading)
        self._opening: Path | None = None  # the folder being opened, listed before its project opens
        self.extra_frames: dict[str, float] = {}  # video frames listed beyond the folder's sampling -> seconds
        self._listing: object | None = None  # the listing of `_opening` whose batches are taken in
        self._first_shown: str | None = None  # the photo shown on opening, before the user chose one
        self._lister = FolderLister(self)
        self.action = action_table.create_actions(self)
        self._build_widgets()
        self._build_menus_and_toolbar()
        self.review = Review(self)
        self.project_actions = ProjectActions(self)
        self._connect()
        self._restore_layout()
        self._update_enabled()
        # back from the terminal: show the labels a command (or another window) saved meanwhile
        QGuiApplication.instance().applicationStateChanged.connect(self._application_state_changed)
        if photos is not None:
            self.open_folder(Path(photos))

    # ---- construction ------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.canvas = ImageCanvas()
        self.canvas_hint = QLabel("Open a photo folder (Ctrl+O) to start.")
        self.canvas_hint.setObjectName("canvasHint")
        self.canvas_hint.setAlignment(Qt.AlignCenter)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.canvas_hint)
        self.stack.addWidget(self.canvas)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.stack, 1)
        self.message_bar = MessageBar(central)  # floats over the photo: never resizes it
        self.setCentralWidget(central)
        self._sheet = None  # the shortcut sheet, while it is open

        self.file_model = FileListModel(self)
        self.file_view = FileListView()
        self.file_view.setModel(self.file_model)
        self.categories = CategoryPanel()
        self.labels = AnnotationTable()
        self.results = ResultPanel()
        self.file_view.setMinimumWidth(SIDE_PANEL_MIN)
        self.labels.setMinimumWidth(SIDE_PANEL_MIN)
        self.categories.setMinimumWidth(SIDE_PANEL_MIN)
        self._add_dock("images", "Images", self.file_view, Qt.LeftDockWidgetArea)
        self._add_dock("categories", "Categories", self.categories, Qt.RightDockWidgetArea)
        self._add_dock("labels", "Labels on this photo", self.labels, Qt.RightDockWidgetArea)
        self._add_dock("results", "Search results", self.results, Qt.BottomDockWidgetArea)

        self.progress = ProgressPanel()
        self.saved_label = QLabel()
        self.saved_label.setObjectName("savedIndicator")
        self.zoom_label = QLabel()
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.statusBar().addPermanentWidget(self.saved_label)
        self._show_saved(None)

        self.category_box = QComboBox()
        self.category_box.setEditable(True)
        self.category_box.setMinimumWidth(160)
        self.category_box.setInsertPolicy(QComboBox.NoInsert)
        self.category_box.lineEdit().setPlaceholderText("category…")
        self.category_box.setToolTip("The category of new boxes and searches: pick one or type a new name")

    def _add_dock(self, name: str, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock_{name}")  # saveState needs stable names
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _build_menus_and_toolbar(self) -> None:
        menus = {name: self.menuBar().addMenu(f"&{name}") for name in action_table.MENUS}
        menus["Search"].setToolTipsVisible(True)  # a disabled action's tooltip says why (Propagate)
        for spec in action_table.ACTIONS:
            if spec.menu:
                if spec.menu not in menus:  # "File/Import": a submenu where its first action stands
                    parent, title = spec.menu.rsplit("/", 1)
                    menus[spec.menu] = menus[parent].addMenu(f"&{title}")
                menus[spec.menu].addAction(self.action[spec.name])
            else:
                self.addAction(self.action[spec.name])
        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("toolbar_main")
        toolbar.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        for name in ("open_folder", "save", None, "undo", "redo", None, "fit", "zoom_in", "zoom_out", None):
            if name is None:
                toolbar.addSeparator()
            else:
                toolbar.addAction(self.action[name])
        toolbar.addWidget(QLabel(" Category "))
        toolbar.addWidget(self.category_box)
        self.action["propagate"].setIconText("Propagate")
        for name in ("find_similar", "find_more", "propagate"):
            toolbar.addAction(self.action[name])
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        toolbar.addWidget(spacer)
        toolbar.addAction(self.action["shortcuts"])
        for name in ("undo", "redo", "fit", "zoom_in", "zoom_out", "save", "open_folder", "shortcuts"):
            toolbar.widgetForAction(self.action[name]).setToolButtonStyle(Qt.ToolButtonIconOnly)
        for name in ("accept", "reject"):
            self.results.add_action_button(self.action[name])
        self.results.add_action_button(self.action["accept_above"], trailing=True)
        self.results.add_action_button(self.action["rerank"], trailing=True)
        self._category_keys = [QShortcut(QKeySequence(k), self, activated=lambda n=int(k): self.pick_category_number(n))
                               for k in action_table.CATEGORY_KEYS]

    def _connect(self) -> None:
        a = self.action
        a["open_folder"].triggered.connect(self._choose_folder)
        a["save"].triggered.connect(self.save)
        a["quit"].triggered.connect(self.close)
        a["undo"].triggered.connect(lambda: self.undo_redo(undo=True))
        a["redo"].triggered.connect(lambda: self.undo_redo(undo=False))
        a["delete"].triggered.connect(self.delete_selected)
        a["prev_image"].triggered.connect(lambda: self.step_image(-1))
        a["next_image"].triggered.connect(lambda: self.step_image(1))
        a["zoom_in"].triggered.connect(self.canvas.zoom_in)
        a["zoom_out"].triggered.connect(self.canvas.zoom_out)
        a["zoom_actual"].triggered.connect(self.canvas.zoom_actual)
        a["fit"].triggered.connect(self.canvas.fit)
        a["cancel_work"].triggered.connect(self.controller.cancel_indexing)
        a["shortcuts"].triggered.connect(self.show_shortcuts)
        c = self.controller
        c.projectOpened.connect(self._project_opened)
        c.deviceReady.connect(self.progress.set_device)
        c.failed.connect(self._engine_failed)
        c.images_loader.loaded.connect(self._image_loaded)
        c.images_loader.failed.connect(self._image_failed)
        self.progress.cancelRequested.connect(self._cancel_work)
        self.file_model.thumbnailWanted.connect(self._request_thumbnail)
        # Scrolling through a long list asks for the thumbnails of every row it passes; once it
        # rests, the requests not started are dropped and the rows now shown ask again.
        self._scroll_rest = QTimer(self, singleShot=True, interval=150, timeout=self._drop_passed_thumbnails)
        self.file_view.verticalScrollBar().valueChanged.connect(lambda _: self._scroll_rest.start())
        self._lister.batch.connect(self._folder_batch)
        self._lister.listed.connect(self._folder_listed)
        self.file_view.selectionModel().currentChanged.connect(
            lambda index, _: index.isValid() and self.show_image(self.file_model.image_at(index.row())))
        self.file_view.doubleClicked.connect(lambda index: self.file_model.toggle(index.row()))
        self.canvas.zoomChanged.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f}%"))
        self.categories.currentChanged.connect(self.set_category)
        self.categories.addRequested.connect(lambda name: self.edit(lambda d: d.add_category(name)))
        self.categories.renameRequested.connect(lambda old, new: self.edit(lambda d: d.rename_category(old, new)))
        self.categories.colorRequested.connect(lambda name, color: self.edit(lambda d: d.set_category_color(name, color)))
        self.categories.deleteRequested.connect(lambda name: self.edit(lambda d: d.remove_category(name)))
        # Queued: the edit resets the table's model, which must not happen inside the editor's
        # own commit (the editor would be destroyed under the event that is finishing it).
        self.labels.model_.categoryEdited.connect(
            lambda ann_id, name: self.edit(lambda d: d.set_annotation_category([ann_id], name)), Qt.QueuedConnection)
        self.labels.selectedIdsChanged.connect(lambda ids: self.canvas.select([f"ann:{i}" for i in ids]))
        self.canvas.selectionChanged.connect(self._canvas_selection)

    def _cancel_work(self) -> None:
        """The status bar's Cancel: a propagation shows its progress there while it runs."""
        if self.controller.is_propagating:
            self.controller.cancel_propagation()
        else:
            self.controller.cancel_indexing()

    # ---- questions and messages (tests replace these) ----------------------------------------
    def ask_folder(self) -> str | None:
        return QFileDialog.getExistingDirectory(self, "Open a photo folder", app_settings.recent_folder()) or None

    def ask_open_path(self, title: str, filter_: str) -> str | None:
        return QFileDialog.getOpenFileName(self, title, "", filter_)[0] or None

    def ask_save_path(self, title: str, name: str, filter_: str) -> str | None:
        return QFileDialog.getSaveFileName(self, title, name, filter_)[0] or None

    def ask_label_folder(self, title: str, start: str) -> str | None:
        """A folder to export label files into, or to import them from."""
        return QFileDialog.getExistingDirectory(self, title, start) or None

    def confirm(self, title: str, text: str) -> bool:
        return dialogs.confirm(self, title, text)

    def show_error(self, title: str, message: str) -> None:
        log.warning("%s: %s", title, message)
        self.message_bar.show_message(f"<b>{title}.</b> {_escape(message)}", "error")

    def _engine_failed(self, what: str, message: str) -> None:
        self.show_error(f"{what} failed", message)
        if not self.controller.is_indexing:
            self.progress.finish("")

    def show_info(self, message: str, timeout_ms: int = 8000) -> None:
        self.message_bar.show_message(_escape(message), "info", timeout_ms)

    # ---- folder and project ------------------------------------------------------------------
    @property
    def project(self):
        return self.controller.project

    def _choose_folder(self) -> None:
        folder = self.ask_folder()
        if folder:
            self.open_folder(Path(folder))

    def open_folder(self, photos: Path) -> None:
        self._detach_document()
        self._update_enabled()
        self.canvas_hint.setText(f"Opening {photos}…")  # never "open a folder" while one opens
        self.stack.setCurrentWidget(self.canvas_hint)
        self.controller.images_loader.clear()  # thumbnails of the previous folder
        self.setWindowTitle(f"dasr-annotator — {photos}")
        self.progress.start("Opening the folder…", cancellable=False)
        self._opening = Path(photos).expanduser().resolve()
        self.extra_frames = {}
        self.file_model.set_images([])
        self.current_image = self.canvas_image = None
        self._listing = object()
        self._first_shown = None
        self._lister.start(self._opening, self._listing)
        self.controller.open_folder(photos)

    def _photo_path(self, rel: str) -> Path | None:
        if self.project is not None and self.document is not None:
            return self.project.path_of(rel)
        return self._opening / rel if self._opening is not None else None

    def _folder_batch(self, token: object, files: list[str], frame_times: dict[str, float]) -> None:
        """More photos of the folder being opened are listed: show them, and the first one, while
        the scan goes on and the project opens."""
        if token is not self._listing or self.document is not None:
            return
        self.file_model.append_images(files, frame_times)
        self._show_first_listed()

    def _folder_listed(self, token: object, files: list[str], frame_times: dict[str, float]) -> None:
        """The whole folder is listed (sorted): the rows are put in that order if the batches
        came in another, the photo shown stays."""
        if token is not self._listing or self.document is not None or not files:
            return
        self.file_model.set_images(files, frame_times)
        self._show_first_listed()

    def _show_first_listed(self) -> None:
        """Show the first row; again when the rows were re-ordered and the photo shown is still
        the one picked for the user (the first of an earlier batch), never one the user chose."""
        model = self.file_model
        first = model.image_at(0) if model.rowCount() else None
        if first is not None and (self.current_image is None
                                  or (self.current_image == self._first_shown and first != self.current_image)):
            self.stack.setCurrentWidget(self.canvas)
            self.file_view.setCurrentIndex(model.index(0))
            self._first_shown = first
        elif self.current_image is not None and not self.file_view.currentIndex().isValid():
            self.file_view.setCurrentIndex(self.file_model.index(self.file_model.row_of(self.current_image)))

    def _request_thumbnail(self, rel: str) -> None:
        """Decoded on the loader's threads at the size the row shows it, in device pixels: the UI
        thread only wraps it (file_list.set_thumbnail)."""
        path = self._photo_path(rel)
        if path is not None:
            side = max(1, round(THUMB_PX * self.file_view.devicePixelRatioF()))
            self.controller.images_loader.request(("thumb", rel), path, side)

    def _drop_passed_thumbnails(self) -> None:
        if self.controller.images_loader.drop("thumb"):
            self.file_model.forget_thumbnail_requests()
            self.file_view.viewport().update()

    def _project_opened(self, project, files: list[str]) -> None:
        app_settings.remember_folder(str(project.photos))
        self._detach_document()
        store = self._load_labels(project)
        if store is not None:
            self.document = Document(store, self)
            self.document.changed.connect(self._document_changed)
            self.document.savedChanged.connect(self._show_saved)
            self.document.saveFailed.connect(self._save_failed)
            self.document.notice.connect(self.show_info)
            self.document.undo_stack.canUndoChanged.connect(self._update_undo_redo)
            self.document.undo_stack.canRedoChanged.connect(self._update_undo_redo)
        self.review.attach(self.document)
        self._lister.stop()
        self._listing = None  # from now on the project's list is the one shown
        listed = self._opening == project.photos and self.file_model.paths() == files
        self.file_model.set_images(files, project.frame_times)  # listed early: kept as it is, one copy of the names
        if not listed:  # (photos listed early keep their rows, and the photo shown stays)
            self.current_image = self.canvas_image = None
            self.canvas.set_image(None)
            self.stack.setCurrentWidget(self.canvas if files else self.canvas_hint)
        self.results.model.frame_times = self.frame_times()
        if not files:
            self.canvas_hint.setText(f"No photos found in {project.photos}.")
        self.statusBar().showMessage(project.state_note, 8000)
        if self.document is not None:
            self._document_changed(Change("reset"))
            self._show_saved(True)
        self._update_enabled()
        self._show_first_listed()

    def _load_labels(self, project):
        """The project's labels; a damaged labels file with a good backup is offered for restore.
        Declined, or without a usable backup, labelling stays off and the file is left as it is
        (None): nothing the user labelled is overwritten."""
        try:
            return project.annotations
        except DamagedFile as exc:
            if exc.backup is not None:
                listed = exc.backup_data.get("annotations")
                count = len(listed) if isinstance(listed, list) else 0
                if self.confirm("Restore the labels from their backup?",
                                f"The labels file of this folder is damaged:\n{exc.problem}\n\n"
                                f"Its backup {exc.backup.name} (the previous save: {count} label"
                                f"{'s' if count != 1 else ''}) is good. Restore it? The damaged file is kept as "
                                f"{damaged_copy_path(exc.path).name}."):
                    try:
                        restored = project.restore_labels_backup()
                        store = project.annotations
                    except ProjectFileError as again:
                        self.show_error("Labels not restored", again.message)
                        return None
                    self.show_info(f"Restored {restored} labels from {exc.backup.name}; the damaged file is kept "
                                   f"as {damaged_copy_path(exc.path).name}.")
                    return store
                why = f"Its backup {exc.backup.name} was not restored"
            else:
                why = "There is no usable backup"
            self.show_error("Labels not loaded", f"{exc.problem}. {why}; the file was left as it is and labelling "
                            "is off until it is repaired or moved away (then open the folder again).")
        except ProjectFileError as exc:
            self.show_error("Labels not loaded", f"{exc.message}. Labelling is off until the file is repaired.")
        return None

    # ---- images ------------------------------------------------------------------------------
    def frame_times(self) -> dict[str, float]:
        """Every listed video frame's time (seconds): the folder's sampling and the frames added."""
        project = self.project
        return {**self.extra_frames, **(project.frame_times if project is not None else {})}

    def add_video_frames(self, frame_times: dict[str, float]) -> None:
        """List frames sampled finer than the folder (a label propagated to them) under their
        videos, and show their times on hit tiles; kept while the folder is open."""
        known = self.project.frame_times if self.project is not None else {}
        self.extra_frames.update({f: t for f, t in frame_times.items() if f not in known})
        self.file_model.add_frames(self.extra_frames)
        self.results.model.frame_times = self.frame_times()
        self.update_file_counts()

    def list_images(self, files: list[str], frame_times: dict[str, float]) -> None:
        """The file list: the folder's photos and sampled frames, and the frames added since."""
        self.file_model.set_images(files, frame_times)
        if self.file_model.add_frames(self.extra_frames):  # listed anew: their counts too
            self.update_file_counts()
        self.results.model.frame_times = self.frame_times()

    def show_image(self, rel: str) -> None:
        path = self._photo_path(rel)
        if rel == self.current_image or path is None:
            return
        self.current_image = rel
        self.review.clear_draft()
        self.file_model.reveal(rel)
        row = self.file_model.row_of(rel)
        if row >= 0 and self.file_view.currentIndex().row() != row:
            self.file_view.setCurrentIndex(self.file_model.index(row))
        self.controller.images_loader.request(("canvas", rel), path, DISPLAY_MAX_SIDE, priority=10)
        self.refresh_image_views()
        self.review.update_propagate()

    def step_image(self, step: int) -> None:
        target = self.file_model.step_from(self.current_image, step)
        if target is not None:
            self.show_image(target)

    def _image_loaded(self, tag, image, size) -> None:
        kind = tag[0]
        if kind == "thumb":
            self.file_model.set_thumbnail(tag[1], image)
        elif kind == "canvas" and tag[1] == self.current_image:
            self.stack.setCurrentWidget(self.canvas)
            self.canvas.set_image(image, size)
            self.canvas_image = tag[1]
            self.refresh_image_views()
            self.review.image_shown(tag[1])
        elif kind == "crop":
            self.results.model.set_crop(tag[1], tag[2], image)

    def _image_failed(self, tag, reason: str) -> None:
        if tag[0] in ("thumb", "canvas"):
            self.file_model.set_problem(tag[1], reason)
        if tag[0] == "canvas" and tag[1] == self.current_image:
            self.canvas.set_image(None)
            self.canvas_image = None
            self.canvas_hint.setText(f"Cannot show {tag[1]}:\n{reason}")
            self.stack.setCurrentWidget(self.canvas_hint)

    # ---- views from the document -------------------------------------------------------------
    def _document_changed(self, change: Change) -> None:
        doc = self.document
        if change.kind in ("categories", "annotations", "reset"):
            counts: dict[str, int] = {}
            for ann in doc.annotations():
                counts[ann.category] = counts.get(ann.category, 0) + 1
            current = self.category() or (doc.categories[0].name if doc.categories else "")
            rows = [CategoryRow(c.name, c.color, counts.get(c.name, 0)) for c in doc.categories]
            names = [c.name for c in doc.categories]
            current = self._follow_category(current, names)
            self.categories.set_categories(rows, current)
            if change.kind != "annotations":
                self._known_categories = names
                box = self.category_box
                if [box.itemText(i) for i in range(box.count())] != names:
                    box.blockSignals(True)
                    box.clear()
                    box.addItems(names)
                    box.blockSignals(False)
                if box.currentText() != current:
                    box.blockSignals(True)
                    box.setEditText(current)
                    box.blockSignals(False)
        self.update_file_counts()
        if change.kind == "reset" or not change.images or self.current_image in change.images:
            self.refresh_image_views()
        self.review.refresh_results()  # also the review's actions: once an edit (their checks walk the labels)

    def _follow_category(self, current: str, names: list[str]) -> str:
        """The category box's name after a category edit: a renamed category is followed to its
        new name (also on undo and redo), a deleted one is left for the first one there is; a
        name typed but never used stays as typed."""
        known = getattr(self, "_known_categories", [])
        if current in names or current not in known:
            return current
        added = [n for n in names if n not in known]
        if len(added) == 1 and len(names) == len(known):
            return added[0]
        return names[0] if names else ""

    def update_file_counts(self) -> None:
        if self.document is None:
            return
        labels, pending = {}, {}
        for ann in self.document.annotations():
            labels[ann.image] = labels.get(ann.image, 0) + 1
        for entry in self.review.waiting():
            pending[entry.image] = pending.get(entry.image, 0) + 1
        self.file_model.set_counts(labels, pending)

    def refresh_image_views(self) -> None:
        """Canvas overlays and the label table for the current photo, from the document."""
        if self.document is None or self.current_image is None:
            return
        annotations = self.document.annotations(self.current_image)
        colors = {c.name: c.color for c in self.document.categories}
        self.labels.set_annotations(annotations, colors)
        if self.canvas_image == self.current_image:
            self.canvas.set_overlays(self.review.overlays(self.current_image, annotations, colors))

    def _canvas_selection(self, keys: list[str]) -> None:
        self.labels.select_ids([k[4:] for k in keys if k.startswith("ann:")])
        self.review.canvas_selected(keys)

    # ---- categories --------------------------------------------------------------------------
    def category(self) -> str:
        return self.category_box.currentText().strip()

    def set_category(self, name: str) -> None:
        if name and name != self.category():
            self.category_box.setEditText(name)
        self.categories.set_current(name)

    def pick_category_number(self, number: int) -> None:
        name = self.categories.name_at(number)
        if name:
            self.set_category(name)
            self.statusBar().showMessage(f"Category: {name}", 3000)

    # ---- edits -------------------------------------------------------------------------------
    def edit(self, change) -> None:
        """Run a document edit; a refused one (e.g. a duplicate name) is shown, not raised."""
        if self.document is None:
            return
        try:
            change(self.document)
        except (ValueError, KeyError) as exc:
            self.show_error("Not possible", str(exc).strip("'\""))

    def delete_selected(self) -> None:
        ids = [k[4:] for k in self.canvas.selected_keys() if k.startswith("ann:")] or self.labels.selected_ids()
        self.edit(lambda d: d.remove_annotations(ids))

    def undo_redo(self, undo: bool) -> None:
        """Undo or redo one step, say what it was, and show the photo it changed."""
        doc = self.document
        if doc is None:
            return
        stack = doc.undo_stack
        text = stack.undoText() if undo else stack.redoText()
        if not text:
            return
        touched: list[str] = []
        collect = lambda change: touched.extend(sorted(change.images))  # noqa: E731
        doc.changed.connect(collect)
        try:
            stack.undo() if undo else stack.redo()
        finally:
            doc.changed.disconnect(collect)
        self.statusBar().showMessage(f"{'Undone' if undo else 'Redone'}: {text}", 5000)
        images = [i for i in dict.fromkeys(touched) if i in self.file_model]
        if images and self.current_image not in images and len(images) <= 3:
            self.show_image(images[0])

    def save(self) -> None:
        if self.document is not None and self.document.save():
            self.statusBar().showMessage(f"Labels saved to {self.document.store.path}", 4000)

    def _save_failed(self, message: str) -> None:
        self.show_error("Saving failed", message)
        self._show_saved(False)

    def _detach_document(self) -> None:
        """Save and let go of the document; its signals must not reach a closing window."""
        doc, self.document = self.document, None
        self.review.attach(None)
        if doc is None:
            return
        doc.save()
        for signal in (doc.changed, doc.savedChanged, doc.saveFailed, doc.notice, doc.undo_stack.canUndoChanged,
                       doc.undo_stack.canRedoChanged):
            signal.disconnect()
        doc.deleteLater()

    def _application_state_changed(self, state) -> None:
        if state == Qt.ApplicationActive and self.document is not None:
            self.document.sync()

    def _show_saved(self, saved: bool | None) -> None:
        text = {None: "", True: "✓ All changes saved", False: "● Unsaved changes"}[saved]
        self.saved_label.setText(text)
        self.saved_label.setProperty("saved", "true" if saved else "false")
        self.saved_label.style().unpolish(self.saved_label)
        self.saved_label.style().polish(self.saved_label)

    def show_shortcuts(self) -> None:
        """F1: the shortcut sheet; F1 again (or Escape in it) closes it."""
        if self._sheet is not None:
            self._sheet.close()
            return
        sheet = self._sheet = dialogs.ShortcutSheet(action_table.shortcut_rows(), self)
        sheet.setAttribute(Qt.WA_DeleteOnClose)
        sheet.destroyed.connect(self._sheet_closed)
        for keys in ("F1", "?"):
            QShortcut(QKeySequence(keys), sheet, activated=sheet.close)
        sheet.show()
        sheet.raise_()
        sheet.activateWindow()  # Escape reaches the sheet, not the photo behind it

    def _sheet_closed(self, *_) -> None:
        self._sheet = None
        self.activateWindow()  # the keys go back to the photo

    def _update_enabled(self, *_) -> None:
        has_doc = self.document is not None
        labels_io = [f"{way}_{name}" for way in ("import", "export") for name in FORMATS]
        for name in ("save", *labels_io, "find_more", "delete", "label_box"):
            self.action[name].setEnabled(has_doc)
        self._update_undo_redo()
        self.review.update_enabled()

    def _update_undo_redo(self, *_) -> None:
        has_doc = self.document is not None
        self.action["undo"].setEnabled(has_doc and self.document.undo_stack.canUndo())
        self.action["redo"].setEnabled(has_doc and self.document.undo_stack.canRedo())

    # ---- layout and closing ------------------------------------------------------------------
    def _default_size(self):
        """1400x900, shrunk to fit a smaller screen's available area."""
        size = QSize(1400, 900)
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is not None:
            size = size.boundedTo(screen.availableGeometry().size() * 0.95)
        return size

    def _restore_layout(self) -> None:
        saved = app_settings.load_layout()
        self.resize(self._default_size())
        self.resizeDocks([self.findChild(QDockWidget, "dock_results")], [260], Qt.Vertical)
        if saved is not None:
            self.restoreGeometry(saved[0])
            self.restoreState(saved[1], app_settings.LAYOUT_VERSION)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        QTimer.singleShot(0, self._give_way_to_photo)  # once the docks have their new sizes

    def _give_way_to_photo(self) -> None:
        """On a narrow window the side panels shrink (to their minimum) before the photo does."""
        docks = [d for d in (self.findChild(QDockWidget, "dock_images"), self.findChild(QDockWidget, "dock_categories"))
                 if d is not None and d.isVisible() and not d.isFloating()]
        if not docks or self.centralWidget() is None:
            return
        wanted = int(self.width() * PHOTO_SHARE)
        short = wanted - self.centralWidget().width()
        if short <= 0:
            return
        widths = [d.width() for d in docks]
        spare = sum(max(w - SIDE_PANEL_MIN, 0) for w in widths)
        if spare <= 0:
            return
        cut = min(short, spare) / spare
        self.resizeDocks(docks, [int(w - max(w - SIDE_PANEL_MIN, 0) * cut) for w in widths], Qt.Horizontal)

    def closeEvent(self, event) -> None:
        if self.document is not None and not self.document.save() and not self.confirm(
                "Labels not saved", "The labels could not be saved (see the message in the window). "
                "Close anyway and lose the unsaved changes?"):
            event.ignore()  # the edits stay in memory; the save keeps being retried
            return
        app_settings.save_layout(self.saveGeometry(), self.saveState(app_settings.LAYOUT_VERSION))
        self._lister.stop()
        self._detach_document()
        self.controller.shutdown()
        for dock in self.findChildren(QDockWidget):
            if dock.isFloating():
                dock.hide()  # a floating dock is a window of its own; it goes with this one
        super().closeEvent(event)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")

