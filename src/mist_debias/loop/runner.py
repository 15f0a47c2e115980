"""Set up a debias run from a :class:`~mist_debias.loop.config.RunConfig`: model, classifier, concepts, folder.

Everything that can be wrong with the user's input is checked before the run folder is created, so a bad run
leaves nothing on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mist_debias import __version__
from mist_debias.core.edit import fingerprint, fingerprint_matches
from mist_debias.core.families import require_unet
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import default_device, load_pipeline, use_scheduler
from mist_debias.core.run_folder import check_run_folder, create_run_folder, mark_legacy, run_mode
from mist_debias.core.targets import EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.loop.config import ClassifierChoice, RunConfig
from mist_debias.loop.debias import DEBIAS_FOLDER, DebiasConcept, DebiasRun, RunError, RunFolder, build_controller
from mist_debias.loop.profile import ORACLE, ModelProfile, profile_classifier
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.classifiers.loading import load_classifier

IGNORED_ON_RESUME = ("generation.batch_size", "classifier.batch_size")


def resolve_classifier(
    choice: ClassifierChoice, profile: ModelProfile | None, config: RunConfig, device: torch.device
) -> CellClassifier:
    """``oracle``: the model profile's own classifier; a mapping: :func:`build_classifier` (checked against every
    concept's cells before any weights load); else a CLIP id or folder. ``None`` picks the default: the profile's
    classifier where it has one, :data:`~mist_debias.measure.classifiers.clip.DEFAULT_CLIP_MODEL` elsewhere."""
    if choice == ORACLE or (choice is None and profile is not None and profile.classifier is not None):
        return profile_classifier(profile, str(config.model), device)
    if isinstance(choice, dict):
        from mist_debias.measure.classifiers.build import build_classifier

        return build_classifier(choice, [config.spec(c) for c in config.concepts], device=device)
    if choice is None:
        from mist_debias.measure.classifiers.clip import DEFAULT_CLIP_MODEL

        choice = DEFAULT_CLIP_MODEL
    return load_classifier(
        choice,
        device=device,
        mode=config.classifier.mode,
        templates=config.classifier.templates,
        batch_size=config.classifier.batch_size,
    )


def run_preserve_prompts(config: RunConfig, profile: ModelProfile | None) -> list[str]:
    """The preserve set: the config's, where a model profile's own set replaces the built-in list."""
    if profile is None or config.edit.preserve != "default":
        return config.preserve_prompts()
    prompts = profile.preserve_set([c.name for c in config.concepts], config.prompt_template)
    return list(dict.fromkeys([*prompts, *config.edit.preserve_prompts]))


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _stored_run_config(stored: Any) -> dict[str, Any]:
    """A stored run config in today's form (a folder from an earlier version may lack newer defaults)."""
    return RunConfig.from_dict(stored).to_dict()


def prepare_run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    profile: ModelProfile | None = None,
) -> tuple[DebiasRun, int]:
    """Validate everything, then create (or reopen with ``resume``) the run folder.

    The folder rules are those of :mod:`mist_debias.core.run_folder`: ``force`` replaces only a debias run
    folder. ``profile`` is the model's profile (its classifier and preserve set); its pipeline is loaded when
    ``config.model`` is ``None`` or one of its names.

    Returns the run and the number of rounds replayed from the log.
    """
    config.check_complete()
    mode = run_mode(resume, force)
    folder = RunFolder(out)
    fresh = check_run_folder(
        out, DEBIAS_FOLDER, mode, config.to_dict(), normalize=_stored_run_config, ignore=IGNORED_ON_RESUME
    )
    saved = None if fresh else folder.read_config()

    target_device = torch.device(device) if device else default_device()
    if config.model is None or (profile is not None and config.model in profile.names):
        if profile is None:
            raise RunError("no model given")
        model = str(profile.pipeline)
    else:
        model = str(config.model)
    pipe = load_pipeline(model, device=target_device, torch_dtype=_dtype(config.generation.dtype, target_device))
    require_unet(pipe, "mist debias")
    if config.generation.scheduler:
        use_scheduler(pipe, config.generation.scheduler)
    projections = find_cross_attention_projections(pipe.unet)
    base_fingerprint = fingerprint(projections)
    if saved is not None and not fingerprint_matches(projections, str(saved.get("model_fingerprint"))):
        raise RunError(f"cannot resume: {out} was made for another model (fingerprint mismatch)")
    classifier = resolve_classifier(config.classifier.drive, profile, config, target_device)
    grader = (
        None
        if config.classifier.evaluate is None
        else resolve_classifier(config.classifier.evaluate, profile, config, target_device)
    )
    concepts = [
        DebiasConcept(c.name, config.spec(c), prompts)
        for c, prompts in zip(config.concepts, config.concept_prompts(), strict=True)
    ]
    preserve = run_preserve_prompts(config, profile)
    problem = EditProblem(
        PromptEncoder(pipe),
        [c.prompts for c in concepts],
        method=config.edit.method,
        keys=config.edit.resolved_keys,
        preserve_prompts=preserve,
        hparams=config.edit.hyperparameters(),
        mist_form=config.edit.mist_form,
    )
    original = {p.name: p.module.weight.detach() for p in projections}
    couplings = [problem.coupling(original, i) for i in range(len(concepts))]
    controller = build_controller(
        config.controller.name, concepts, config.tolerance, config.budget, config.controller.options, couplings
    )
    edit_info = {
        "base_model": model,
        "method": config.edit.method,
        "keys": problem.keys,
        "mist_form": problem.mist_form,
        "hyperparameters": vars(config.edit.hyperparameters()),
        "preserve_prompts": preserve,
    }
    if fresh:
        record = {
            "run": config.to_dict(),
            "model": model,
            "model_fingerprint": base_fingerprint,
            "preserve_prompts": preserve,
            "classifier": type(classifier).__name__,
            "grader": None if grader is None else type(grader).__name__,
            "library_version": __version__,
        }
        create_run_folder(out, DEBIAS_FOLDER, mode, {DEBIAS_FOLDER.settings_file: json.dumps(record, indent=2)})
    else:
        mark_legacy(out, DEBIAS_FOLDER)
    run = DebiasRun(
        pipe,
        concepts,
        controller,
        classifier,
        config.generation.generation_config(),
        problem,
        folder,
        seed=config.seed,
        edit_info=edit_info,
        grader=grader,
        observable_axes=() if profile is None else profile.observable_axes,
    )
    entries = [] if fresh else folder.read_log()
    run.resume(entries)
    return run, len({e["round"] for e in entries})
