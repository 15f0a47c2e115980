"""Set up a debias run from a :class:`~mist_debias.loop.config.RunConfig`: model, classifier, concepts, folder.

Everything that can be wrong with the user's input is checked before the run folder is created, so a bad run
leaves nothing on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mist_debias import __version__
from mist_debias.core.atomic import check_output_path, write_text_atomic
from mist_debias.core.edit import fingerprint
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import default_device, load_pipeline, use_scheduler
from mist_debias.core.prompts import concept_prompt, strip_article
from mist_debias.core.targets import EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.loop.config import RunConfig
from mist_debias.loop.debias import DebiasConcept, DebiasRun, RunError, RunFolder, build_controller
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.classifiers.loading import ORACLE, load_classifier
from mist_debias.world import PROFESSIONS as WORLD_PROFESSIONS
from mist_debias.world import bundled_world_path

IGNORED_ON_RESUME = ("generation.batch_size", "classifier.batch_size")


def is_bundled_world(model: str | None) -> bool:
    return model is None or Path(model).expanduser().resolve() == bundled_world_path().resolve()


def resolve_classifier(name: str | None, model: str | None, config: RunConfig, device: torch.device) -> CellClassifier:
    """``oracle`` (the synthetic world's exact decoder), else a CLIP id or folder; ``None`` picks the default:
    the oracle on the bundled world, :data:`~mist_debias.measure.classifiers.clip.DEFAULT_CLIP_MODEL` elsewhere."""
    if name is None:
        from mist_debias.measure.classifiers.clip import DEFAULT_CLIP_MODEL

        name = ORACLE if is_bundled_world(model) else DEFAULT_CLIP_MODEL
    return load_classifier(
        name,
        device=device,
        mode=config.classifier.mode,
        templates=config.classifier.templates,
        batch_size=config.classifier.batch_size,
    )


def run_preserve_prompts(config: RunConfig) -> list[str]:
    """The preserve set: the config's, where the synthetic world's own professions replace the built-in list."""
    if not is_bundled_world(config.model) or config.edit.preserve != "default":
        return config.preserve_prompts()
    edited = {strip_article(c.name).lower() for c in config.concepts}
    prompts = ["", *(concept_prompt(p, config.prompt_template) for p in WORLD_PROFESSIONS if p.lower() not in edited)]
    return list(dict.fromkeys([*prompts, *config.edit.preserve_prompts]))


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def prepare_run(
    config: RunConfig, out: Path, resume: bool = False, force: bool = False, device: str | None = None
) -> tuple[DebiasRun, int]:
    """Validate everything, then create (or reopen with ``resume``) the run folder.

    Returns the run and the number of rounds replayed from the log.
    """
    config.check_complete()
    folder = RunFolder(out)
    saved: dict[str, Any] | None = None
    if resume:
        if not folder.is_run():
            raise RunError(f"cannot resume: {out} is not a run folder")
        saved = folder.read_config()
        differences = RunConfig.from_dict(saved["run"]).differences(config, ignore=IGNORED_ON_RESUME)
        if differences:
            raise RunError(f"cannot resume: {out} was made with other settings ({', '.join(differences[:4])})")
    elif out.exists() and not force:
        raise RunError(f"{out} already exists (use --resume to continue it or --force to replace it)")
    else:
        check_output_path(out, force=True)

    target_device = torch.device(device) if device else default_device()
    model = str(config.model) if config.model else str(bundled_world_path())
    pipe = load_pipeline(model, device=target_device, torch_dtype=_dtype(config.generation.dtype, target_device))
    if config.generation.scheduler:
        use_scheduler(pipe, config.generation.scheduler)
    base_fingerprint = fingerprint(find_cross_attention_projections(pipe.unet))
    if saved is not None and saved.get("model_fingerprint") != base_fingerprint:
        raise RunError(f"cannot resume: {out} was made for another model (fingerprint mismatch)")
    classifier = resolve_classifier(config.classifier.drive, config.model, config, target_device)
    concepts = [
        DebiasConcept(c.name, config.spec(c), prompts)
        for c, prompts in zip(config.concepts, config.concept_prompts(), strict=True)
    ]
    preserve = run_preserve_prompts(config)
    problem = EditProblem(
        PromptEncoder(pipe),
        [c.prompts for c in concepts],
        method=config.edit.method,
        keys=config.edit.resolved_keys,
        preserve_prompts=preserve,
        hparams=config.edit.hyperparameters(),
        mist_form=config.edit.mist_form,
    )
    controller = build_controller(
        config.controller.name, concepts, config.tolerance, config.budget, config.controller.options
    )
    edit_info = {
        "base_model": model,
        "method": config.edit.method,
        "keys": problem.keys,
        "mist_form": problem.mist_form,
        "hyperparameters": vars(config.edit.hyperparameters()),
        "preserve_prompts": preserve,
    }
    if not resume:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        record = {
            "run": config.to_dict(),
            "model": model,
            "model_fingerprint": base_fingerprint,
            "preserve_prompts": preserve,
            "classifier": type(classifier).__name__,
            "library_version": __version__,
        }
        write_text_atomic(folder.config, json.dumps(record, indent=2))
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
    )
    entries = folder.read_log() if resume else []
    run.resume(entries)
    return run, len({e["round"] for e in entries})
