"""MODEL as the user types it: a profile name (``world``), a profile's pipeline folder, a hub id or a folder;
and a profile's sampler as the default of the sampling options."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mist_debias.core.errors import MistError

if TYPE_CHECKING:
    from mist_debias.core.generate import GenerationConfig
    from mist_debias.loop.profile import ModelProfile

MODEL_HELP = "Hub id, local diffusers pipeline folder, or a model profile's name ('world': the synthetic world)."
SAMPLER_OPTIONS = ("steps", "guidance", "eta")
GENERIC_SAMPLER = {"steps": 20, "guidance": 7.5, "eta": 0.0, "batch_size": 8}
"""The sampler of ``mist generate`` and ``mist evaluate`` on a model without a profile."""


def resolve_model(model: str | None) -> tuple[str, ModelProfile | None]:
    """What to load for ``model`` (a profile's pipeline folder, else ``model`` itself) and its profile; the
    model libraries are quieted first (their progress bars and warnings are not the command's output)."""
    from mist_debias.app.environment import quiet_loaded_libraries
    from mist_debias.profiles import find_profile, model_path

    quiet_loaded_libraries()

    profile = find_profile(model)
    return model_path(model, profile), profile


def sampler_defaults(profile: ModelProfile | None, fallback: Mapping[str, Any] | None, **given: Any) -> dict[str, Any]:
    """The sampler options (``steps``, ``guidance``, ``eta``, ``batch_size``): each given value, else the
    profile's, else ``fallback``'s (``None`` without one). Says on stderr, in one line, when a profile's sampler
    fills a sampling option."""
    if profile is None:
        return {name: value if value is not None else (fallback or {}).get(name) for name, value in given.items()}
    chosen = {name: value if value is not None else getattr(profile.sampler, name) for name, value in given.items()}
    if any(given.get(name) is None for name in SAMPLER_OPTIONS):
        sys.stderr.write(
            f"using the {profile.name}'s sampler: {chosen['steps']} steps, guidance {chosen['guidance']:g}, "
            f"η {chosen['eta']:g} (override with --guidance/--eta/--steps)\n"
        )
    return chosen


def generation_config(
    profile: ModelProfile | None,
    steps: int | None,
    guidance: float | None,
    eta: float | None,
    batch_size: int | None,
    height: int | None,
    width: int | None,
    negative_prompt: str | None,
) -> GenerationConfig:
    """The sampler of ``mist generate`` and ``mist evaluate``: each option given, else the profile's, else
    :data:`GENERIC_SAMPLER`; a bad value is one :class:`~mist_debias.core.errors.MistError` line."""
    from mist_debias.core.generate import GenerationConfig

    sampler = sampler_defaults(profile, GENERIC_SAMPLER, steps=steps, guidance=guidance, eta=eta, batch_size=batch_size)
    try:
        return GenerationConfig(
            sampler["steps"], sampler["guidance"], height, width, negative_prompt, sampler["batch_size"], sampler["eta"]
        )
    except ValueError as error:
        raise MistError(str(error)) from None
