"""Pictures of a debias run's report: before/after image grids and, for the synthetic world, a glyph legend.

The grids regenerate images with the run's own model, final edit (``edit.safetensors``) and sampler settings
(``config.json``): for every concept, ``count`` images of its prompt on the same fixed seeds
``seed, seed + 1, …`` once with the original weights and once with the edit applied, each labelled with the
cell the run's classifier assigns it. torch, diffusers and the world are imported only inside these functions,
so a report without grids imports none of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mist_debias.loop.profile import ModelProfile
from mist_debias.profiles import find_profile

WORLD_PROFILE = "world"
LEGEND_BASE = {"gender": "man", "race": "White", "age": "young", "profession": "doctor"}
LEGEND_CUES = {
    "gender": "head shape and hair length",
    "race": "skin colour",
    "age": "hair colour",
    "profession": "background colour",
}


@dataclass(frozen=True)
class GridImage:
    """One generated image and the classifier's cell for it (``None`` when unlabelled, ``"invalid"`` when the
    classifier could not read it)."""

    image: Image.Image
    label: str | None


@dataclass(frozen=True)
class ConceptGrid:
    """A concept's images on the same seeds without (``original``) and with (``edited``) the final edit."""

    concept: str
    prompt: str
    seeds: list[int]
    original: list[GridImage]
    edited: list[GridImage]


@dataclass(frozen=True)
class LegendEntry:
    """An example glyph of one attribute value, and the colour that marks it (``None`` for shape cues)."""

    axis: str
    value: str
    cue: str
    image: Image.Image
    colour: tuple[int, int, int] | None


def run_settings(config: dict) -> dict:
    """The run's settings: the ``run`` section of a ``config.json`` written by ``mist debias`` (older and
    hand-written configs keep them at the top level)."""
    run = config.get("run")
    return run if isinstance(run, dict) else config


def run_profile(config: dict) -> ModelProfile | None:
    """The model profile of a run folder's ``config.json``: its resolved ``model`` (a profile's pipeline folder),
    else its settings' ``model`` (``None`` is the default profile)."""
    model = config.get("model") if isinstance(config.get("model"), str) else run_settings(config).get("model")
    return find_profile(model)


def is_world_run(config: dict) -> bool:
    """Whether a run folder's ``config.json`` names the bundled synthetic world as its model."""
    profile = run_profile(config)
    return profile is not None and profile.name == WORLD_PROFILE


def run_model(config: dict) -> str | None:
    """The model a run loaded (``config.json``'s resolved ``model``, else its settings' ``model``)."""
    model = config.get("model")
    if isinstance(model, str):
        return model
    model = run_settings(config).get("model")
    return model if isinstance(model, str) else None


def run_grids(folder: Path, config: dict, count: int, device: str | None = None) -> list[ConceptGrid]:
    """Generate the before/after grids of every concept of the run in ``folder`` (see the module docstring).

    Raises :class:`~mist_debias.core.errors.MistError` (one line) when the run has no final edit or its model
    cannot be loaded or does not fit the edit.
    """
    import torch

    from mist_debias.core.edit import Edit
    from mist_debias.core.errors import MistError
    from mist_debias.core.generate import GenerationConfig, generate_images
    from mist_debias.core.pipeline import default_device, load_pipeline, use_scheduler
    from mist_debias.core.spec import AttributeSpec
    from mist_debias.loop.debias import RunFolder

    edit_path = RunFolder(folder).edit
    if not edit_path.is_file():
        raise MistError(f"{folder} has no final edit ({edit_path.name}); finish the run to see its images")
    edit = Edit.load(edit_path)
    settings = run_settings(config)
    profile = run_profile(config)
    model = run_model(config) or edit.info.get("base_model")
    if profile is not None:
        model = str(profile.pipeline)
    if model is None:
        raise MistError(f"{folder}/config.json names no model")
    generation = settings.get("generation") or {}
    target = torch.device(device) if device else default_device()
    dtype_name = generation.get("dtype") or "auto"
    if dtype_name == "auto":
        dtype_name = "float16" if target.type == "cuda" else "float32"
    pipe = load_pipeline(model, device=target, torch_dtype=getattr(torch, dtype_name))
    if generation.get("scheduler"):
        use_scheduler(pipe, generation["scheduler"])
    defaults = GenerationConfig()
    sampler = GenerationConfig(
        steps=int(generation.get("steps") or defaults.steps),
        guidance=float(generation.get("guidance", defaults.guidance)),
        height=generation.get("height"),
        width=generation.get("width"),
        negative_prompt=generation.get("negative_prompt"),
        batch_size=int(generation.get("batch_size") or defaults.batch_size),
        eta=float(generation.get("eta", defaults.eta)),
    )
    classifier = _classifier(config, target)
    seed = int(settings.get("seed") or 0)
    seeds = list(range(seed, seed + count))
    grids = []
    concepts = [c for c in edit.info.get("concepts") or [] if isinstance(c, dict)]
    for concept in concepts:
        prompt = concept.get("prompt") or concept.get("name", "")
        spec = AttributeSpec.from_dict(concept["spec"]) if concept.get("spec") else None
        original = generate_images(pipe, [prompt] * count, seeds, sampler)
        with edit.applied(pipe):
            edited = generate_images(pipe, [prompt] * count, seeds, sampler)
        grids.append(
            ConceptGrid(
                concept=str(concept.get("name") or prompt),
                prompt=prompt,
                seeds=seeds,
                original=_labelled(original, classifier, spec),
                edited=_labelled(edited, classifier, spec),
            )
        )
    return grids


def _classifier(config: dict, device):
    """The classifier that drove the run, or ``None`` when it cannot be loaded here (the grids then go
    unlabelled rather than fail)."""
    from mist_debias.core.errors import MistError
    from mist_debias.loop.profile import ORACLE, profile_classifier
    from mist_debias.measure.classifiers.loading import load_classifier

    options = run_settings(config).get("classifier") or {}
    name = options.get("drive")
    model = run_model(config)
    profile = run_profile(config)
    try:
        if name == ORACLE or (name is None and profile is not None and profile.classifier is not None):
            return profile_classifier(profile, str(model), device)
        if name is None:
            from mist_debias.measure.classifiers.clip import DEFAULT_CLIP_MODEL

            name = DEFAULT_CLIP_MODEL
        return load_classifier(
            name,
            device=device,
            mode=options.get("mode") or "joint",
            templates=options.get("templates"),
            batch_size=int(options.get("batch_size") or 32),
        )
    except MistError:
        return None


def _labelled(images: list[Image.Image], classifier, spec) -> list[GridImage]:
    if classifier is None or spec is None or not images:
        return [GridImage(image, None) for image in images]
    predictions = classifier.classify(images, spec)
    phrases = spec.phrases
    return [
        GridImage(image, phrases[label] if label >= 0 else "invalid")
        for image, label in zip(images, predictions.labels.tolist(), strict=True)
    ]


def world_legend(seed: int = 0) -> list[LegendEntry]:
    """One example glyph per attribute value of the synthetic world: each value drawn on a fixed base person
    (a young White man in front of the doctor's background) with only that attribute changed."""
    render = importlib.import_module("mist_debias.world.render")  # the package exports a function of that name

    values = {
        "gender": (render.GENDERS, {}),
        "race": (render.RACES, render.SKIN_COLORS),
        "age": (render.AGES, render.HAIR_COLORS),
        "profession": (tuple(render.BACKGROUND_COLORS), render.BACKGROUND_COLORS),
    }
    entries = []
    for axis, (names, colours) in values.items():
        for value in names:
            attributes = render.Attributes(**{**LEGEND_BASE, axis: value})
            image = render.to_pil(render.render(attributes, np.random.default_rng(seed)))
            entries.append(LegendEntry(axis, value, LEGEND_CUES[axis], image, colours.get(value)))
    return entries
