"""Project-level operations of the window: label export and import in every format (File >
Export, File > Import), settings that may need a re-index, and what indexing tells the user
(progress, skipped photos, pauses, rebuilds)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject

from dasr_annotator.app.gui import settings as app_settings
from dasr_annotator.app.gui.workers import describe_error
from dasr_annotator.engine.store.formats import FORMATS
from dasr_annotator.engine.store.formats.common import LabelFileError
from dasr_annotator.widgets import dialogs

if TYPE_CHECKING:
    from dasr_annotator.app.gui.main_window import MainWindow


class ProjectActions(QObject):
    def __init__(self, window: "MainWindow"):
        super().__init__(window)
        self.window = window
        w, a, c = window, window.action, window.controller
        for name in FORMATS:
            a[f"export_{name}"].triggered.connect(lambda _=False, name=name: self.export_labels(name))
            a[f"import_{name}"].triggered.connect(lambda _=False, name=name: self.import_labels(name))
        a["settings"].triggered.connect(self.edit_settings)
        c.indexingStarted.connect(lambda: w.progress.start("Indexing…"))
        c.indexingProgress.connect(lambda done, total, eta: w.progress.set_progress(
            f"Indexing {done} / {total}", done, total, eta))
        c.indexingFinished.connect(self._indexing_finished)
        c.indexingStopped.connect(self._indexing_stopped)
        c.incompatibleIndex.connect(self._incompatible_index)

    # ---- label files ---------------------------------------------------------------------------
    def export_labels(self, name: str) -> None:
        """Write the labels in the format `name` (engine/store/formats) to a file or folder."""
        w = self.window
        if w.project is None or w.document is None:
            return
        fmt = FORMATS[name]
        title = f"Export {fmt.title}"
        start = str(w.project.photos.parent / fmt.default_name) if fmt.export_to == "folder" \
            else str(w.project.photos / fmt.default_name)
        path = (w.ask_label_folder(title, start) if fmt.export_to == "folder"
                else w.ask_save_path(title, start, f"{fmt.title} ({fmt.pattern})"))
        if not path:
            return
        labelled, photos = len(w.document.labelled_images()), w.file_model.rowCount()
        everything = labelled < photos and w.confirm(
            title, f"The export lists the {labelled} labelled photos. Also list the {photos - labelled} photos "
            "without labels (as images with no annotations: negatives for training)?")
        try:
            w.document.save()
            report = fmt.export(w.project, path, all_images=everything)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the user
            w.show_error("Export failed", describe_error(exc))
            return
        skipped = f"; {len(report.skipped)} skipped (unreadable images)" if report.skipped else ""
        lost = f" Note: {report.not_carried}." if report.not_carried else ""
        w.show_info(f"Exported {report.annotations} labels on {report.images} photos in {report.categories} "
                    f"categories to {path}{skipped}.{lost}")

    def import_labels(self, name: str) -> None:
        """Add the labels of a file or folder in the format `name`; the import is one undo step."""
        w = self.window
        if w.project is None or w.document is None:
            return
        fmt = FORMATS[name]
        title = f"Import {fmt.title}"
        path = (w.ask_label_folder(title, str(w.project.photos.parent)) if fmt.import_from == "folder"
                else w.ask_open_path(title, f"{fmt.title} ({fmt.pattern})"))
        if not path:
            return
        doc = w.document
        before = {a.id for a in doc.annotations()}
        known = {c.name for c in doc.categories}
        try:
            report = fmt.import_labels(w.project, path)
        except LabelFileError as exc:
            w.show_error("Import failed", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the user
            w.show_error("Import failed", describe_error(exc))
            return
        doc.adopt_import([a for a in doc.annotations() if a.id not in before], known)
        duplicates = f"; {len(report.duplicates)} already present" if report.duplicates else ""
        w.show_info(f"Imported {report.added} labels from {path}{duplicates}.")

    # ---- settings ----------------------------------------------------------------------------
    def edit_settings(self) -> None:
        from dasr_annotator.engine.dasr.backbones import BACKBONES  # torch is loaded by now

        current = vars(self.window.prefs).copy()
        choices = {"backbone": BACKBONES, "device": app_settings.DEVICES, "mode": app_settings.MODES}
        project = self.window.project
        folder = {"video_fps": project.video_fps()} if project is not None else {}  # kept in the folder
        dialog = dialogs.SettingsDialog({**current, **folder}, choices, parent=self.window)
        if dialog.exec() == dialogs.SettingsDialog.Accepted:
            values = dialog.values()
            fps = values.pop("video_fps", None)
            self.apply_preferences(app_settings.Preferences(**{**current, **values}))
            app_settings.save_preferences(self.window.prefs)
            if project is not None and fps is not None and fps != folder["video_fps"]:
                self.set_video_fps(project, fps)

    def set_video_fps(self, project, fps: float) -> None:
        """Sample the folder's videos at `fps` from now on; indexing brings in the new frames."""
        try:
            project.set_video_fps(fps)
        except (ValueError, OSError) as exc:
            self.window.show_error("Video sampling not changed", str(exc))
            return
        self.window.controller.start_indexing()

    def apply_preferences(self, prefs: app_settings.Preferences) -> None:
        w = self.window
        w.prefs = prefs
        if w.controller.apply_preferences(prefs) and w.confirm(
                "Re-index the folder?", "The new backbone, mode or image size needs a new index of every photo. "
                "Your labels are kept. Re-index now?"):
            w.controller.rebuild_index()

    # ---- indexing status ---------------------------------------------------------------------
    def _indexing_finished(self, report) -> None:
        w = self.window
        new = f", {report.indexed} new" if report.indexed else ""
        w.progress.finish(f"{report.images} photo{'s' if report.images != 1 else ''} indexed{new}")
        if report.skipped:
            names = ", ".join(s["file"] for s in report.skipped[:3]) + (" …" if len(report.skipped) > 3 else "")
            w.show_error("Some photos could not be indexed",
                         f"{len(report.skipped)} skipped ({names}): {report.skipped[0]['reason']}")
        changed = [n for n in report.notes if "renamed or moved photo" in n or "no longer in the folder" in n]
        if changed:
            w.show_info(" ".join(changed), 15000)
            if w.document is not None:
                w.document.sync()  # indexing moved labels of renamed photos in the labels file
        listed = [p for p in w.file_model.paths() if p not in w.extra_frames]
        # the same photos: the list takes the engine's names (one copy of each in memory)
        w.list_images(w.controller.images, w.project.frame_times)
        if w.controller.images != listed:  # photos added or removed meanwhile
            w.update_file_counts()

    def _indexing_stopped(self, why: str) -> None:
        if why == "paused":
            self.window.progress.start("Indexing paused for a search…")
        else:
            self.window.progress.finish("Indexing cancelled — it resumes where it stopped next time")

    def _incompatible_index(self, message: str) -> None:
        w = self.window
        w.progress.finish("Not indexed")
        if w.confirm("Re-index the folder?", f"{message}\n\nRe-index with the current settings? Your labels are kept."):
            w.controller.rebuild_index()
        else:
            w.show_error("Index not updated", message)
