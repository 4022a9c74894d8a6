"""Label file formats: one module per format, each with `export(project, out, all_images=False)
-> ExportReport` and `import_labels(project, path) -> ImportReport`; `common.py` holds what they
share. The registry below is what the CLI and the window offer; a module is imported only when
its format is used."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # as the command line spells it
    title: str  # as people call it
    module: str
    export_to: str  # "file" or "folder"
    import_from: str  # "file" or "folder" (a folder format also takes one of its files)
    pattern: str  # the files it reads, for open dialogs
    default_name: str  # what an export is called unless told otherwise

    def _module(self):
        return importlib.import_module(self.module)

    def export(self, project, out, all_images: bool = False, **options):
        return self._module().export(project, out, all_images=all_images, **options)

    def import_labels(self, project, path):
        return self._module().import_labels(project, path)


_STORE = "dasr_annotator.engine.store"
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("coco", "COCO", f"{_STORE}.coco", "file", "file", "*.json", "annotations.coco.json"),
    Format("yolo", "YOLO", f"{_STORE}.formats.yolo", "folder", "folder", "classes.txt", "yolo"),
    Format("voc", "Pascal VOC", f"{_STORE}.formats.voc", "folder", "folder", "*.xml", "voc"),
    Format("cvat", "CVAT for images 1.1", f"{_STORE}.formats.cvat", "file", "file", "*.xml", "annotations.cvat.xml"),
    Format("labelme", "labelme", f"{_STORE}.formats.labelme", "folder", "folder", "*.json", "labelme"),
)}


def get(name: str) -> Format:
    return FORMATS[name]
