"""The registry of model profiles: every :class:`~mist_debias.loop.profile.ModelProfile` published under the
entry-point group ``mist_debias.profiles`` (this package's own: ``world``, the bundled synthetic world).

A package adds a profile by declaring, in its ``pyproject.toml``::

    [project.entry-points."mist_debias.profiles"]
    my-model = "my_package.profile:PROFILE"

:func:`find_profile` maps the MODEL a user typed to a profile: a profile's name or alias, or its pipeline folder;
anything else (a hub id, another folder) has no profile.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from mist_debias.core.errors import MistError
from mist_debias.loop.profile import ModelProfile

ENTRY_POINT_GROUP = "mist_debias.profiles"
DEFAULT_PROFILE = "world"
"""The profile of ``mist debias`` without a MODEL."""


def registered_profiles() -> dict[str, ModelProfile]:
    """Every registered profile by name, loaded from the entry points of the installed packages."""
    profiles = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        profile = point.load()
        if not isinstance(profile, ModelProfile):
            raise MistError(f"model profile {point.name!r} ({point.value}) is not a ModelProfile")
        profiles[profile.name] = profile
    return profiles


def find_profile(model: str | None) -> ModelProfile | None:
    """The profile of ``model``: ``None`` → the default profile; a profile's name or alias, or a path to its
    pipeline folder → that profile; anything else → ``None``."""
    profiles = registered_profiles()
    if model is None:
        return profiles.get(DEFAULT_PROFILE)
    for profile in profiles.values():
        if model in profile.names:
            return profile
    folder = Path(model).expanduser().resolve()
    return next((p for p in profiles.values() if p.pipeline.resolve() == folder), None)


def model_path(model: str | None, profile: ModelProfile | None) -> str:
    """What to load for ``model``: a profile's pipeline folder, else the hub id or folder as given."""
    if profile is not None and (model is None or model in profile.names):
        return str(profile.pipeline)
    if model is None:
        raise MistError("no model given")
    return model
