"""Crash-safe project files: atomic writes with one backup generation, careful JSON reads.

A write goes to a uniquely named temp file in the same folder, is flushed and fsynced, then
renamed over the target and the folder is fsynced, so a crash leaves either the old or the new
file, never a torn one. Before the rename the previous file is kept as `NAME.bak` (a hard link
where the file system allows, else a copy), so there is always a last good generation to fall
back to. Reads raise `ProjectFileError` with a reason a person can act on; when the main file is
damaged but its backup is good, `read_json_with_recovery` returns the backup's data and a note
saying so.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".bak"
DAMAGED_SUFFIX = ".damaged"
CACHE_ENV = "DASR_ANNOTATOR_CACHE"
APP_DIR_NAME = "dasr-annotator"


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_current_umask()


class ProjectFileError(Exception):
    """A project file cannot be read or written; `message` says which and why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def backup_path(path: str | os.PathLike) -> Path:
    """Where the previous generation of `path` is kept."""
    path = Path(path)
    return path.with_name(path.name + BACKUP_SUFFIX)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, backup: bool = True) -> None:
    """Replace `path` with `data` atomically; keep the old file as `.bak` when `backup`.

    Raises ProjectFileError (from the OSError) when the folder is not writable, the disk is
    full, etc.; the previous file is then left exactly as it was.
    """
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ProjectFileError(f"cannot save {path}: {_describe(exc)}") from exc
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        _put_in_place(tmp_name, path, backup)
    except BaseException as exc:
        remove_quietly(tmp_name)
        if isinstance(exc, OSError):
            raise ProjectFileError(f"cannot save {path}: {_describe(exc)}") from exc
        raise
    _fsync_dir(folder)


def temp_beside(path: str | os.PathLike) -> str:
    """A new empty temporary file in `path`'s folder, for a writer that cannot stream its bytes
    through `atomic_write_bytes` (faiss writes index files by name); `commit_temp` puts it in place.
    ProjectFileError when the folder takes no new file."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ProjectFileError(f"cannot save {path}: {_describe(exc)}") from exc
    os.close(fd)
    return name


def commit_temp(tmp_name: str, path: str | os.PathLike) -> None:
    """What `atomic_write_bytes` does after writing, for a `temp_beside` file: fsync, the file
    mode `path` has (or a new file's), rename over `path`, fsync the folder. ProjectFileError
    (the temporary file left for the caller to remove) when the disk refuses."""
    path = Path(path)
    try:
        fd = os.open(tmp_name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _put_in_place(tmp_name, path, backup=False)
    except OSError as exc:
        raise ProjectFileError(f"cannot save {path}: {_describe(exc)}") from exc
    _fsync_dir(path.parent)


def _put_in_place(tmp_name: str, path: Path, backup: bool) -> None:
    """A written and fsynced temporary file becomes `path`: `path`'s mode (not mkstemp's 0600),
    the old file kept as `.bak` when `backup`, one rename."""
    os.chmod(tmp_name, _mode_for(path))
    if backup and path.exists():
        _keep_backup(path)
    os.replace(tmp_name, path)


def atomic_write_text(path: str | os.PathLike, text: str, backup: bool = True) -> None:
    """atomic_write_bytes of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), backup=backup)


def atomic_write_json(path: str | os.PathLike, obj: Any, backup: bool = True) -> None:
    """Write `obj` as UTF-8 JSON atomically. Non-JSON values (NaN, sets, ...) raise ValueError /
    TypeError before anything on disk changes. Strings may hold surrogate escapes (non-UTF-8
    file names); they are written as \\u escapes and read back identical."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: names of files whose bytes are not UTF-8 (os.fsdecode's escapes).
        # \u escapes keep them exact through json.loads, so such files stay addressable.
        data = json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False).encode("ascii")
    atomic_write_bytes(path, data + b"\n", backup=backup)


def read_json(path: str | os.PathLike, *, fallback_to_backup: bool = True, expect: type | None = None) -> Any:
    """Parsed JSON of `path`; `expect` (e.g. dict) also checks the top-level type.

    With `fallback_to_backup`, a missing or damaged main file whose `.bak` is good yields the
    backup's data (logged as a warning; use read_json_with_recovery to show the note).
    Raises ProjectFileError naming the file and the problem otherwise.
    """
    if not fallback_to_backup:
        return _parse(Path(path), expect)
    data, note = read_json_with_recovery(path, expect=expect)
    if note:
        log.warning("%s", note)
    return data


def read_json_with_recovery(path: str | os.PathLike, *, expect: type | None = None) -> tuple[Any, str | None]:
    """(data, note): note is None when `path` was good, else says that the backup was used
    and why. Raises ProjectFileError when neither the file nor its backup is usable (the
    message gives the main file's problem, the one a person will look at)."""
    path = Path(path)
    try:
        return _parse(path, expect), None
    except ProjectFileError as main_error:
        backup = backup_path(path)
        if not backup.exists():
            raise
        try:
            data = _parse(backup, expect)
        except ProjectFileError:
            raise ProjectFileError(f"{main_error.message}; its backup {backup.name} is unusable too") from None
        return data, f"{main_error.message}; using the previous version from {backup.name}"


class DamagedFile(ProjectFileError):
    """A file that exists but cannot be used (`problem` says why). `backup` is its backup
    generation when that one is good (with `backup_data` parsed), else None."""

    def __init__(self, message: str, path: Path, problem: str, backup: Path | None, backup_data: Any = None):
        super().__init__(message)
        self.path, self.problem, self.backup, self.backup_data = path, problem, backup, backup_data


def require_intact(path: str | os.PathLike, *, expect: type | None = None) -> None:
    """Raise DamagedFile when `path` exists but does not parse; a missing file passes.

    For files whose silent replacement by the backup would hide lost work (the labels): the
    caller tells the user, and offers `restore_backup` when `DamagedFile.backup` is set."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        _parse(path, expect)
    except ProjectFileError as exc:
        backup = backup_path(path)
        try:
            data = _parse(backup, expect)
        except ProjectFileError:
            raise DamagedFile(exc.message, path, exc.message, None) from None
        raise DamagedFile(exc.message, path, exc.message, backup, data) from None


def damaged_copy_path(path: str | os.PathLike) -> Path:
    """Where `restore_backup(..., keep_damaged=True)` keeps the damaged file."""
    path = Path(path)
    return path.with_name(path.name + DAMAGED_SUFFIX)


def restore_backup(path: str | os.PathLike, keep_damaged: bool = False) -> None:
    """Put the `.bak` generation back as the main file (atomically). The damaged main file is
    dropped, or with `keep_damaged` kept as `NAME.damaged` (what it holds may still be salvaged)."""
    path = Path(path)
    try:
        data = backup_path(path).read_bytes()
    except OSError as exc:
        raise ProjectFileError(f"cannot restore {path} from its backup: {_describe(exc)}") from exc
    if keep_damaged and path.is_file():
        try:
            damaged = path.read_bytes()
        except OSError as exc:
            raise ProjectFileError(f"cannot keep a copy of the damaged {path}: {_describe(exc)}") from exc
        atomic_write_bytes(damaged_copy_path(path), damaged, backup=False)
    atomic_write_bytes(path, data, backup=False)


def user_cache_dir() -> Path:
    """Per-user cache folder (not created): $DASR_ANNOTATOR_CACHE, else
    $XDG_CACHE_HOME/dasr-annotator, else the platform's usual cache place."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are ignored
        return Path(xdg) / APP_DIR_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_DIR_NAME
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / APP_DIR_NAME / "Cache"
    return Path.home() / ".cache" / APP_DIR_NAME


def is_writable_dir(path: str | os.PathLike) -> bool:
    """True when a file can really be created in `path` (tried, not guessed from mode bits:
    os.access is wrong for root, read-only mounts on some systems and network shares)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".dasr-write-test.", dir=path)
    except OSError:
        return False
    os.close(fd)
    remove_quietly(probe)
    return True


def _parse(path: Path, expect: type | None) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProjectFileError(f"{path} is missing") from None
    except OSError as exc:
        raise ProjectFileError(f"cannot read {path}: {_describe(exc)}") from None
    if not raw.strip():
        raise ProjectFileError(f"{path} is empty (an interrupted save?)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProjectFileError(f"{path} is not a text file (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ProjectFileError(f"{path} is damaged: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
    except RecursionError:
        raise ProjectFileError(f"{path} is damaged: JSON nested too deeply") from None
    if expect is not None and not isinstance(data, expect):
        raise ProjectFileError(f"{path} has the wrong content: expected a JSON {_json_type_name(expect)}, found a {_json_type_name(type(data))}")
    return data


def _keep_backup(path: Path) -> None:
    """Make `path.bak` the current `path` without ever leaving `path` missing."""
    backup = backup_path(path)
    tmp_name = str(path.parent / f".{backup.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        try:
            os.link(path, tmp_name)  # same inode: free, and the old data cannot be torn
        except OSError:
            shutil.copy2(path, tmp_name)  # file systems without hard links
        os.replace(tmp_name, backup)
    finally:
        # Also needed after success: rename() between two links of one inode (concurrent
        # savers) is a no-op that leaves the temp name behind.
        remove_quietly(tmp_name)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return _NEW_FILE_MODE


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable. Not possible everywhere (Windows); best effort there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(name: str) -> None:
    """Remove a file if it is there (a temporary file left by a failed write)."""
    try:
        os.unlink(name)
    except OSError:
        pass


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _json_type_name(kind: type) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "true/false", type(None): "null"}
    return names.get(kind, kind.__name__)
