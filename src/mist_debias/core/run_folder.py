"""Run folders: the output folder of one ``mist debias``, ``mist evaluate`` or ``mist world bench`` run.

A run folder holds a kind marker ``run.json`` (``{"format": "mist-debias-run", "kind": "debias", …}``), its
settings file (``config.json``, ``evaluation.json`` or ``bench_settings.json``) and whatever the run writes.
It is created atomically: built in a hidden temporary sibling with the marker and the settings already inside,
then renamed onto its path, so a folder at that path is either a complete run folder or was never made by mist.

Three modes (:data:`Mode`):

* ``fresh`` — the path must not exist (an empty folder is also accepted: it holds nothing to lose);
* ``resume`` — the path must be a run folder of the same kind whose stored settings equal the current ones
  (the first differing settings are named in the error);
* ``force`` — the path is replaced when it is a run folder of the same kind (or missing or empty). Anything
  else — a file, a folder without the marker, a run folder of another kind, the home folder, a folder holding
  the working directory — is refused with one line and left untouched.

Folders written before the marker existed are recognised by their settings file (each :class:`FolderKind`
names a ``legacy`` check on it); resuming one adds the marker.

The run log (``log.jsonl``, one JSON object per line) is read by :func:`read_jsonl` only: a torn last line —
no newline at its end, as a kill in the middle of a write leaves it — is dropped; any other malformed line is
an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mist_debias import __version__
from mist_debias.core.atomic import atomic_directory, check_output_path, write_text_atomic
from mist_debias.core.errors import MistError

MARKER_FILE = "run.json"
MARKER_FORMAT = "mist-debias-run"
MARKER_VERSION = 1
Mode = Literal["fresh", "resume", "force"]
SHOWN_DIFFERENCES = 3
SHOWN_VALUE_CHARS = 40


class RunFolderError(MistError):
    """A run folder that cannot be created, resumed or replaced as asked; the message is one line."""


@dataclass(frozen=True)
class FolderKind:
    """One kind of run folder: its name, its settings file, and where in that file the compared settings are.

    ``settings_key``: the key of the settings inside the file (``None``: the whole file). ``legacy``: whether a
    folder without the marker was written by an earlier version (given the parsed settings file).
    """

    name: str
    settings_file: str
    settings_key: str | None = None
    legacy: Callable[[Any], bool] | None = None


def run_mode(resume: bool, force: bool) -> Mode:
    """The mode of ``--resume``/``--force`` flags (both at once is an error)."""
    if resume and force:
        raise RunFolderError("give --resume or --force, not both")
    return "resume" if resume else "force" if force else "fresh"


def read_json(path: Path) -> Any:
    """Parse a JSON file; unreadable or invalid files raise :class:`RunFolderError`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise RunFolderError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError:
        raise RunFolderError(f"{path} is not valid JSON") from None


def folder_kind(path: Path, kinds: Sequence[FolderKind] = ()) -> str | None:
    """The kind of run folder at ``path``: its marker's, else the first of ``kinds`` whose legacy check
    accepts the folder's settings file; ``None`` for anything else (missing, a file, a user folder)."""
    path = Path(path)
    if not path.is_dir():
        return None
    marker = path / MARKER_FILE
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("format") == MARKER_FORMAT and isinstance(data.get("kind"), str):
            return data["kind"]
        return None
    for kind in kinds:
        settings = path / kind.settings_file
        if kind.legacy is None or not settings.is_file():
            continue
        try:
            data = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if kind.legacy(data):
            return kind.name
    return None


def marker(kind: FolderKind) -> dict[str, Any]:
    """The contents of the kind marker of a new folder."""
    return {
        "format": MARKER_FORMAT,
        "kind": kind.name,
        "format_version": MARKER_VERSION,
        "library_version": __version__,
    }


def check_run_folder(
    path: Path,
    kind: FolderKind,
    mode: Mode,
    settings: Mapping[str, Any],
    normalize: Callable[[Any], Any] | None = None,
    ignore: Sequence[str] = (),
) -> bool:
    """Decide what ``mode`` does with ``path`` without writing anything; True when the run starts afresh.

    Raises :class:`RunFolderError` (one line) for a path the mode may not use, and for ``resume`` with stored
    settings that differ from ``settings`` (compared as JSON, after ``normalize`` of the stored ones, leaving
    out the dotted keys in ``ignore`` and keys below them).
    """
    path = Path(path)
    if not path.exists():
        if mode == "resume":
            raise RunFolderError(f"cannot resume: {path} does not exist")
        check_output_path(path)
        return True
    found = folder_kind(path, [kind])
    if mode == "resume":
        if found != kind.name:
            raise RunFolderError(f"cannot resume: {path} is not {_named(kind.name)}{_other_kind(found)}")
        stored = read_json(path / kind.settings_file)
        if kind.settings_key is not None:
            stored = stored.get(kind.settings_key) if isinstance(stored, dict) else None
        if normalize is not None:
            stored = normalize(stored)
        differences = settings_differences(stored, settings, ignore)
        if differences:
            raise RunFolderError(
                f"cannot resume {path}: it was made with other settings ({differences}); --force replaces it"
            )
        return False
    _check_replaceable(path, kind, mode, found)
    return True


def create_run_folder(path: Path, kind: FolderKind, mode: Mode, files: Mapping[str, str]) -> None:
    """Create the run folder atomically with the kind marker (written first) and ``files`` (relative path →
    text) inside, replacing a folder of the same kind (``force``) or an empty one (checked again here)."""
    path = Path(path)
    if path.exists():
        _check_replaceable(path, kind, mode, folder_kind(path, [kind]))
    with atomic_directory(path, force=True) as temp:
        (temp / MARKER_FILE).write_text(json.dumps(marker(kind), indent=2) + "\n", encoding="utf-8")
        for name, text in files.items():
            (temp / name).parent.mkdir(parents=True, exist_ok=True)
            (temp / name).write_text(text, encoding="utf-8")


def mark_legacy(path: Path, kind: FolderKind) -> None:
    """Give a folder recognised by its layout (see :func:`folder_kind`) the kind marker."""
    if not (Path(path) / MARKER_FILE).is_file():
        write_text_atomic(Path(path) / MARKER_FILE, json.dumps(marker(kind), indent=2) + "\n")


def _check_replaceable(path: Path, kind: FolderKind, mode: Mode, found: str | None) -> None:
    if not path.is_dir():
        raise RunFolderError(f"{path} exists and is not a folder; refusing to use it")
    resolved = path.resolve()
    if resolved == Path.home().resolve() or resolved in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise RunFolderError(f"{path} is the home folder or holds the working folder; refusing to use it")
    if not any(path.iterdir()):
        return
    if found != kind.name:
        action = "replace" if mode == "force" else "use"
        raise RunFolderError(
            f"{path} exists and is not {_named(kind.name)}{_other_kind(found)}; refusing to {action} it"
        )
    if mode != "force":
        raise RunFolderError(f"{path} already exists (use --resume to continue it or --force to replace it)")


def _named(kind: str) -> str:
    """``"an evaluation folder"``, ``"a debias folder"``."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} folder"


def _other_kind(found: str | None) -> str:
    return f" (it is {_named(found)})" if found else ""


def settings_differences(stored: Any, current: Any, ignore: Sequence[str] = ()) -> str:
    """The first differing settings of two JSON-like values as one line (``n: 4 → 5; seed: 0 → 1``), or
    ``""`` when they are equal (both are compared after a JSON round trip, so tuples equal lists); dotted keys
    in ``ignore``, and keys below them, are left out."""
    mine = flatten_settings(json.loads(json.dumps(stored)))
    theirs = flatten_settings(json.loads(json.dumps(current)))
    keys = [
        key
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key, _MISSING) != theirs.get(key, _MISSING)
        and not any(key == prefix or key.startswith(prefix + ".") for prefix in ignore)
    ]
    shown = [
        f"{key or 'settings'}: {_short(mine.get(key, _MISSING))} → {_short(theirs.get(key, _MISSING))}" for key in keys
    ]
    more = f"; {len(keys) - SHOWN_DIFFERENCES} more" if len(keys) > SHOWN_DIFFERENCES else ""
    return "; ".join(shown[:SHOWN_DIFFERENCES]) + more


_MISSING = object()


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


def flatten_settings(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"a": {"b": 1}}`` → ``{"a.b": 1}``); lists are kept whole."""
    if isinstance(data, Mapping) and (data or not prefix):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


# ------------------------------------------------------------------------------------------------- the log


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The entries of a JSON-lines log, one dict per non-empty line.

    A last line without its newline that does not parse is a write torn by a kill and is dropped; any other
    line that is not a JSON object raises :class:`RunFolderError` naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RunFolderError(f"cannot read {path}: {error.strerror or error}") from None
    lines = text.split("\n")
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if number == len(lines):  # the text does not end with a newline: the last write was torn
                break
            raise RunFolderError(f"{path}, line {number} is not valid JSON") from None
        if not isinstance(entry, dict):
            raise RunFolderError(f"{path}, line {number} is not a JSON object")
        entries.append(entry)
    return entries


def write_jsonl(path: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` atomically with one JSON object per line."""
    write_text_atomic(Path(path), "".join(json.dumps(entry) + "\n" for entry in entries))


def write_json(path: Path, payload: Any) -> None:
    """Replace ``path`` atomically with ``payload`` as indented JSON."""
    write_text_atomic(Path(path), json.dumps(payload, indent=2) + "\n")
