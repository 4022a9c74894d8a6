"""The layer rules from shared/docs/style.md: engine/ never imports Qt; widgets/ never torch/faiss."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("dasr_annotator."):
                roots.add(node.module)
    return roots


def _violations(folder: str, forbidden: set[str], forbidden_internal: tuple[str, ...] = (), repo: Path = REPO) -> list[str]:
    bad = []
    for path in sorted((repo / folder).rglob("*.py")):
        for name in _imported_roots(path):
            if name in forbidden or (forbidden_internal and name.startswith(forbidden_internal)):
                bad.append(f"{path.relative_to(repo).as_posix()} imports {name}")
    return bad


def test_engine_never_imports_qt_or_app():
    assert _violations(
        "engine", {"PySide6", "shiboken6", "PyQt5", "PyQt6"}, ("dasr_annotator.app", "dasr_annotator.widgets")
    ) == []


def test_widgets_never_import_torch_or_faiss():
    assert _violations("widgets", {"torch", "torchvision", "faiss"}, ("dasr_annotator.engine.backbones",)) == []


def test_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "engine"
    bad.mkdir()
    (bad / "x.py").write_text("from PySide6.QtCore import QObject\n")
    assert _violations("engine", {"PySide6"}, repo=tmp_path) == ["engine/x.py imports PySide6"]
