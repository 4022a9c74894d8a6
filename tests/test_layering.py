"""The layer rules from shared/docs/style.md and docs/architecture.md, read from the source.

- engine/ never imports Qt, app/ or widgets/; widgets/ never import torch or faiss; app/cli/ never
  imports Qt (nor app/gui/ or widgets/).
- engine's rooms import one way: the shared modules (types, threads, netguard) import no room;
  dasr (the method) and store (files) import only the shared modules; search may import dasr and
  store; project may import search, dasr and store; evaluation sits on top beside project.
- One import style: every import inside the package is absolute (`dasr_annotator....`).
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("app", "engine", "widgets")

# rank of each room of engine/: a room may import rooms of a lower rank only (and itself)
ENGINE_ROOMS = {"types": 0, "threads": 0, "netguard": 0, "dasr": 1, "store": 1, "search": 2, "project": 3,
                "evaluation": 3}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) of every import statement, wherever it stands in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found.append((module, node.level))
            if node.level == 0 and module in ("dasr_annotator.engine", "dasr_annotator.app"):
                # `from dasr_annotator.engine import search` names a room
                found.extend((f"{module}.{alias.name}", 0) for alias in node.names)
    return found


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for module, level in _imports(path):
        if level:
            continue
        roots.add(module.split(".")[0])
        if module.startswith("dasr_annotator."):
            roots.add(module)
    return roots


def _violations(folder: str, forbidden: set[str], forbidden_internal: tuple[str, ...] = (), repo: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((repo / folder).rglob("*.py")):
        for name in sorted(_imported_roots(path)):
            if name in forbidden or (forbidden_internal and name.startswith(forbidden_internal)):
                bad.append(f"{path.relative_to(repo).as_posix()} imports {name}")
    return bad


def _relative_imports(repo: Path = REPO) -> list[str]:
    bad = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((repo / folder).rglob("*.py")):
            for module, level in _imports(path):
                if level:
                    bad.append(f"{path.relative_to(repo).as_posix()} imports {'.' * level}{module} (relative)")
    return bad


def _room_of(engine_path: Path) -> str:
    """The room of a module under engine/: its subpackage, or its own name for a shared module."""
    return engine_path.parts[0] if len(engine_path.parts) > 1 else engine_path.stem


def _room_order_violations(repo: Path = REPO) -> list[str]:
    bad = []
    engine = repo / "engine"
    for path in sorted(engine.rglob("*.py")):
        rel = path.relative_to(engine)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        room = _room_of(rel)
        if room not in ENGINE_ROOMS:
            bad.append(f"engine/{rel.as_posix()} is in no known room ({room}); add it to ENGINE_ROOMS")
            continue
        for module, level in _imports(path):
            if level or not module.startswith("dasr_annotator.engine."):
                continue
            target = module.split(".")[2]
            if target == room:
                continue
            if target not in ENGINE_ROOMS or ENGINE_ROOMS[target] >= ENGINE_ROOMS[room]:
                bad.append(f"engine/{rel.as_posix()} ({room}) imports {module}")
    return bad


def test_engine_never_imports_qt_or_app():
    assert _violations(
        "engine", {"PySide6", "shiboken6", "PyQt5", "PyQt6"}, ("dasr_annotator.app", "dasr_annotator.widgets")
    ) == []


def test_widgets_never_import_torch_or_faiss():
    assert _violations("widgets", {"torch", "torchvision", "faiss"}, ("dasr_annotator.engine.dasr",)) == []


def test_cli_never_imports_qt_or_the_gui():
    assert _violations(
        "app/cli", {"PySide6", "shiboken6"}, ("dasr_annotator.app.gui", "dasr_annotator.widgets")
    ) == []


def test_engine_rooms_import_one_way():
    assert _room_order_violations() == []


def test_every_import_inside_the_package_is_absolute():
    assert _relative_imports() == []


def test_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "engine"
    bad.mkdir()
    (bad / "x.py").write_text("from PySide6.QtCore import QObject\n")
    assert _violations("engine", {"PySide6"}, repo=tmp_path) == ["engine/x.py imports PySide6"]


def test_checker_catches_relative_and_upward_imports(tmp_path):
    (tmp_path / "engine" / "dasr").mkdir(parents=True)
    (tmp_path / "engine" / "store").mkdir()
    (tmp_path / "engine" / "dasr" / "x.py").write_text(
        "from ..app import main\nfrom dasr_annotator.engine.search.searcher import Searcher\n")
    (tmp_path / "engine" / "store" / "y.py").write_text("from dasr_annotator.engine import project\n")
    assert _relative_imports(repo=tmp_path) == ["engine/dasr/x.py imports ..app (relative)"]
    assert _room_order_violations(repo=tmp_path) == [
        "engine/dasr/x.py (dasr) imports dasr_annotator.engine.search.searcher",
        "engine/store/y.py (store) imports dasr_annotator.engine.project",
    ]
