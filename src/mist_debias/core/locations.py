"""Where a model or classifier comes from: a local path or a hub id (``owner/name``)."""

from pathlib import Path


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id: it starts with ``.``, ``/`` or ``~``, exists, or has other than one
    ``/`` (a hub id is ``owner/name``)."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") != 1
