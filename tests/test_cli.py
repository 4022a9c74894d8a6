import subprocess
import sys

from dasr_annotator import __version__
from dasr_annotator.app import main as cli


def test_help_lists_every_subcommand(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for name in ("index", "search", "label", "export", "eval"):
        assert name in out
    assert "PHOTOS" in out


def test_version_from_console_script():
    exe = subprocess.run(
        [sys.executable, "-m", "dasr_annotator", "--version"], capture_output=True, text=True, timeout=60
    )
    assert exe.returncode == 0
    assert __version__ in exe.stdout


def test_headless_cli_imports_no_qt():
    code = (
        "import sys; from dasr_annotator.app import main as cli; "
        "[cli._command_module(n) for n in cli.SUBCOMMANDS]; "
        "print(any(m.startswith('PySide6') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_gui_refuses_missing_folder(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
