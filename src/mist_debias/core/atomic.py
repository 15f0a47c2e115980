"""Atomic writes: a file or folder appears complete at its final path, or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mist_debias.core.errors import OutputPathError


def check_output_path(path: Path, force: bool = False) -> Path:
    """Refuse an existing ``path`` (unless ``force``) and a parent folder that cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputPathError(f"{path} already exists (use --force to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to {parent}: not a writable folder")
    return path


@contextlib.contextmanager
def atomic_file(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (an atomic replace)."""
    path = check_output_path(Path(path), force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputPathError(f"cannot write to {path.parent}: {error.strerror}") from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        _give_default_modes(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it takes the place of ``path``."""
    path = check_output_path(Path(path), force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise OutputPathError(f"cannot write to {path.parent}: {error.strerror}") from None
    try:
        yield temp
        _give_default_modes(temp)
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / path.name)
            os.replace(temp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_modes(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode ``open()`` / ``mkdir()`` would: 0666 / 0777
    less the umask. ``mkstemp``/``mkdtemp`` and some writers (safetensors) create files 0600; this runs after the
    writer has finished, just before the rename, so whatever created the file, the result is the same."""
    mask = _umask()
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_dir():
        for item in path.rglob("*"):
            if not item.is_symlink():
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (overwrites; for files a program owns, like run logs)."""
    with atomic_file(path, force=True) as temp:
        temp.write_text(text, encoding="utf-8")
