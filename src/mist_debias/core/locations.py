"""Where a model or classifier comes from: a local path or a hub id (``owner/name``)."""

from pathlib import Path


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id: it starts with ``.``, ``/`` or ``~``, exists, or has other than one
    ``/`` (a hub id is ``owner/name``)."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") != 1


def is_missing_path(name: str) -> bool:
    """A local path (:func:`looks_like_path`) that does not exist: "not found", never a hub lookup."""
    return looks_like_path(name) and not Path(name).expanduser().exists()
