"""Atomic writers give every file and folder the mode ``open()`` and ``mkdir()`` would (the umask decides)."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from mist_debias.core.atomic import atomic_directory, atomic_file, write_text_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_files_written_by_any_writer_get_the_umask_mode(tmp_path, umask_022):
    with atomic_file(tmp_path / "tensors.safetensors") as temp:
        save_file({"x": torch.zeros(2)}, str(temp))  # safetensors writes a new 0600 file
    write_text_atomic(tmp_path / "log.txt", "text")
    assert mode(tmp_path / "tensors.safetensors") == 0o644
    assert mode(tmp_path / "log.txt") == 0o644


def test_folders_and_everything_inside_get_the_umask_mode(tmp_path, umask_022):
    with atomic_directory(tmp_path / "out") as temp:
        (temp / "sub").mkdir(mode=0o700)
        save_file({"x": torch.zeros(2)}, str(temp / "sub" / "weights.safetensors"))
        (temp / "notes.txt").write_text("x")
        os.chmod(temp / "notes.txt", 0o600)
    out = tmp_path / "out"
    assert mode(out) == 0o755 and mode(out / "sub") == 0o755
    assert mode(out / "sub" / "weights.safetensors") == 0o644 and mode(out / "notes.txt") == 0o644


def test_a_stricter_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        with atomic_file(tmp_path / "private.safetensors") as temp:
            save_file({"x": torch.zeros(2)}, str(temp))
    finally:
        os.umask(previous)
    assert mode(tmp_path / "private.safetensors") == 0o600
