"""The model card (``README.md``) of an exported LoRA adapter, in the Hugging Face Hub's format.

The card is YAML front matter (``base_model``, ``library_name: diffusers``, ``tags``, ``license`` when known)
followed by Markdown: what the adapter does, its concepts with their cells, targets and weights, the measured
before/after cell distributions with their intervals and the classifier that measured them (when the edit
comes from a ``mist debias`` run folder, whose ``summary.json`` and ``config.json`` sit next to its
``edit.safetensors``), how to load it with diffusers, and its limitations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mist_debias.app.report.grids import is_world_run, run_settings
from mist_debias.core.atomic import atomic_directory

CARD_FILE = "README.md"
TAGS = ["lora", "mist-debias", "text-to-image", "debiasing"]
RUN_EDIT_FILE = "edit.safetensors"
RUN_SUMMARY_FILE = "summary.json"
RUN_CONFIG_FILE = "config.json"
SAMPLER_KEYS = ("scheduler", "steps", "guidance", "eta", "height", "width", "negative_prompt")
WORLD_LICENSE = "mit"
"""The bundled synthetic world ships with mist-debias and shares its licence."""


@dataclass
class RunRecord:
    """What a run folder measured: its ``summary.json`` and ``config.json`` (either may be empty)."""

    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def run_record_of(edit_file: Path) -> RunRecord | None:
    """The run folder's record when ``edit_file`` is a run's ``edit.safetensors`` with a readable summary."""
    edit_file = Path(edit_file)
    summary_path = edit_file.parent / RUN_SUMMARY_FILE
    if edit_file.name != RUN_EDIT_FILE or not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        config_path = edit_file.parent / RUN_CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(config, dict):
        return None
    return RunRecord(summary=summary, config=config)


def is_hub_id(model: str) -> bool:
    """``owner/name`` that is not a folder on this machine."""
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(model).expanduser().exists()


def base_model_license(model: str, world: bool) -> str | None:
    """The base model's licence when it is known here: the world's, or the ``license`` of a local model
    folder's own card (``README.md`` front matter)."""
    if world:
        return WORLD_LICENSE
    readme = Path(model).expanduser() / CARD_FILE
    if not readme.is_file():
        return None
    front = _front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    license_name = front.get("license")
    return str(license_name) if isinstance(license_name, str) else None


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str:
    """A value for a Markdown table cell (``–`` when missing; ``|`` escaped)."""
    return "–" if value is None else str(value).replace("|", "\\|")


def _is_world(base_model: str, run: RunRecord | None) -> bool:
    """Whether the adapter is for the bundled synthetic world (by the run's config or the model given)."""
    return (run is not None and bool(run.config) and is_world_run(run.config)) or is_world_run({"model": base_model})


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return _text(value)


def _interval(distribution: dict | None, j: int) -> str:
    """``0.46 [0.34, 0.58]`` of cell ``j``, ``–`` when not measured."""
    if not distribution or j >= len(distribution.get("ratios") or []):
        return "–"
    lower, upper = distribution.get("lower") or [], distribution.get("upper") or []
    ratio = _cell(distribution["ratios"][j], 2)
    if j < len(lower) and j < len(upper):
        return f"{ratio} [{_cell(lower[j], 2)}, {_cell(upper[j], 2)}]"
    return ratio


def _concept_cells(concept: dict, measured: dict | None) -> list[str]:
    """A concept's cell names: the run's, the edit's spec, else its attribute prompts."""
    if measured and measured.get("cells"):
        return [str(c) for c in measured["cells"]]
    spec = concept.get("spec") or {}
    if spec.get("cells"):
        return [str(c.get("phrase")) for c in spec["cells"]]
    return [str(a) for a in concept.get("attributes") or []]


def _concept_target(concept: dict, measured: dict | None, k: int) -> list[float | None]:
    target = (measured or {}).get("target") or (concept.get("spec") or {}).get("target")
    return list(target) if target and len(target) == k else [None] * k


def model_card(
    metadata: dict[str, Any],
    base_model: str,
    adapter_dir: str,
    scale: float = 1.0,
    run: RunRecord | None = None,
    license_name: str | None = None,
) -> str:
    """The card's text for an edit with ``metadata`` (:meth:`~mist_debias.core.edit.Edit.metadata`) exported
    at strength ``scale`` for ``base_model`` into ``adapter_dir``; ``run`` adds the run's measurements."""
    world = _is_world(base_model, run)
    run = run or RunRecord()
    hub = is_hub_id(base_model)
    front: dict[str, Any] = {}
    if hub:
        front["base_model"] = base_model
    front.update({"library_name": "diffusers", "tags": list(TAGS)})
    if license_name:
        front["license"] = license_name
    concepts = [c for c in metadata.get("concepts") or [] if isinstance(c, dict)]
    measured = {str(c.get("name")): c for c in run.summary.get("concepts") or [] if isinstance(c, dict)}
    names = [str(c.get("name") or c.get("prompt")) for c in concepts]
    base_line = f"`{base_model}`" + (" (the synthetic world shipped with mist-debias)" if world else "")

    lines = [
        f"# Debiasing adapter for {', '.join(names) or 'its concepts'}",
        "",
        f"A rank-{metadata.get('rank', '?')} LoRA for {base_line} made with mist-debias. It is a closed-form "
        "edit of the UNet's cross-attention key and value projections (`to_k`, `to_v`, "
        f"{len(metadata.get('layers') or [])} layers): the prompts below are steered towards a target "
        "distribution over attribute cells, while the keys and values of the preserved prompts are held close "
        "to the original ones.",
        "",
    ]
    if not hub and not world:
        lines += [
            "The base model is a local folder: set `base_model` in the front matter to its hub id before "
            "publishing this card.",
            "",
        ]
    lines += ["## Concepts", "", "| concept | edited prompt | cell | target | weight |", "|---|---|---|---:|---:|"]
    for name, concept in zip(names, concepts, strict=True):
        record = measured.get(name)
        cells = _concept_cells(concept, record)
        target = _concept_target(concept, record, len(cells))
        weights = list(concept.get("weights") or [])
        for j, cell in enumerate(cells):
            first = j == 0
            lines.append(
                f"| {name if first else ''} | {concept.get('prompt', '') if first else ''} | {cell} | "
                f"{_cell(target[j])} | {_cell(weights[j] if j < len(weights) else None)} |"
            )
    lines += _measurements(names, concepts, measured, run)
    lines += _usage(base_model, adapter_dir, concepts, run, hub, world)
    lines += _details(metadata, scale)
    lines += _limitations(world)
    yaml_text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{yaml_text}---\n\n" + "\n".join(lines).rstrip() + "\n"


def _measurements(names: list[str], concepts: list[dict], measured: dict[str, dict], run: RunRecord) -> list[str]:
    """Before/after tables per concept, from the run summary or from distributions stored in the edit."""
    sources = {}
    for name, concept in zip(names, concepts, strict=True):
        record = measured.get(name) or concept
        if any(record.get(key) for key in ("before", "after", "after_fresh_seeds")):
            sources[name] = (concept, record)
    if not sources:
        return [
            "",
            "## Measured distributions",
            "",
            "Not recorded with this edit. `mist debias` runs measure them; `mist evaluate` measures any edit.",
        ]
    classifier = run.config.get("classifier") or (run_settings(run.config).get("classifier") or {}).get("drive")
    lines = ["", "## Measured distributions", ""]
    lines.append(
        f"Fraction of generated images per cell, measured by `{classifier or 'the run classifier'}`, with 95% "
        "simultaneous intervals over the cells in brackets. *Before*: the original model; *after*: the final "
        "edit on the images the run measured; *fresh seeds*: the final edit on seeds the run never used."
    )
    generation = run_settings(run.config).get("generation") or {}
    if generation:
        sampler = ", ".join(f"{key} {generation[key]}" for key in SAMPLER_KEYS if generation.get(key) not in (None, ""))
        lines += ["", f"Sampler of these images: {sampler}."]
    for name, (concept, record) in sources.items():
        cells = _concept_cells(concept, record)
        target = _concept_target(concept, record, len(cells))
        before, after, fresh = (record.get(key) for key in ("before", "after", "after_fresh_seeds"))
        counted = ", ".join(
            f"{label} n = {d.get('n')}" for label, d in (("before", before), ("after", after), ("fresh", fresh)) if d
        )
        status = ""
        if record.get("converged") is not None:
            status = "; converged" if record["converged"] else f"; not converged ({record.get('reason') or '–'})"
        lines += [
            "",
            f"**{name}** ({counted}{status})",
            "",
            "| cell | target | before | after | after, fresh seeds |",
            "|---|---:|---|---|---|",
        ]
        for j, cell in enumerate(cells):
            lines.append(
                f"| {cell} | {_cell(target[j])} | {_interval(before, j)} | {_interval(after, j)} | "
                f"{_interval(fresh, j)} |"
            )
    return lines


def _usage(
    base_model: str, adapter_dir: str, concepts: list[dict], run: RunRecord, hub: bool, world: bool
) -> list[str]:
    """The diffusers lines that load the adapter (with the run's sampler arguments when known)."""
    generation = run_settings(run.config).get("generation") or {}
    options = []
    if generation.get("guidance") is not None:
        options.append(f"guidance_scale={generation['guidance']}")
    if generation.get("eta"):
        options.append(f"eta={generation['eta']}")
    prompt = concepts[0].get("prompt") if concepts else "a photo of a person"
    if world:
        load = [
            "from mist_debias.world import bundled_world_path",
            "",
            "pipe = DiffusionPipeline.from_pretrained(bundled_world_path())",
        ]
    else:
        model_argument = base_model if hub else "path/to/the/base/model"
        load = [
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{model_argument}", torch_dtype=torch.float16).to("cuda")',
        ]
    return [
        "",
        "## How to use",
        "",
        "```python",
        *(["import torch"] if not world else []),
        "from diffusers import DiffusionPipeline",
        *load,
        f'pipe.load_lora_weights("{adapter_dir}")  # this folder, or the hub repository it is published to',
        f"image = pipe({json.dumps(prompt)}{''.join(', ' + o for o in options)}).images[0]",
        "```",
        "",
        "`pipe.fuse_lora()` bakes it into the weights; `pipe.unload_lora_weights()` removes it."
        + (" The sampler arguments are those the run measured with." if options else ""),
    ]


def _details(metadata: dict[str, Any], scale: float) -> list[str]:
    hyper = metadata.get("hyperparameters") or {}
    preserved = metadata.get("preserve_prompts") or []
    rows = [
        ("method", metadata.get("method")),
        ("keys", metadata.get("keys")),
        ("form", metadata.get("mist_form")),
        ("hyperparameters", ", ".join(f"{key} {value}" for key, value in hyper.items()) or None),
        ("strength α", f"{scale:g}"),
        ("rank", metadata.get("rank")),
        ("edited layers", len(metadata.get("layers") or [])),
        ("preserved prompts", ", ".join(json.dumps(p, ensure_ascii=False) for p in preserved) or None),
        ("base-model fingerprint", metadata.get("base_fingerprint")),
        ("mist-debias version", metadata.get("library_version")),
    ]
    return [
        "",
        "## Edit details",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {_cell(value) if isinstance(value, float) else _text(value)} |" for key, value in rows),
    ]


def _limitations(world: bool) -> list[str]:
    lines = [
        "",
        "## Limitations",
        "",
        "- The distributions are those of one classifier's reading of generated images, with its own errors; "
        "the cells are that classifier's categories, not anyone's identity.",
        "- They hold for the listed prompts and sampler settings; other phrasings of a concept, other samplers "
        "or guidance scales can give other distributions.",
        "- Prompts outside the preserved set may change too; measure what matters to you with `mist evaluate`.",
        "- The adapter only fits the base model it was solved on.",
    ]
    if world:
        lines.append(
            "- The base model is a tiny synthetic world of 32×32 glyphs with planted bias: the adapter "
            "demonstrates the method and is of no use on a real model."
        )
    return lines


def export_lora_with_card(
    edit, pipe, out: Path, base_model: str, edit_file: Path, scale: float = 1.0, force: bool = False
) -> Path:
    """Export ``edit`` as a diffusers LoRA folder (:meth:`~mist_debias.core.edit.Edit.export_lora`) with its
    model card; both appear at ``out`` together or not at all."""
    run = run_record_of(edit_file)
    world = _is_world(base_model, run)
    card = model_card(
        edit.metadata(), base_model, str(out), scale=scale, run=run, license_name=base_model_license(base_model, world)
    )
    with atomic_directory(Path(out), force=force) as temp:
        adapter = edit.export_lora(pipe, temp / "adapter", scale=scale)
        for item in adapter.iterdir():
            item.rename(temp / item.name)
        adapter.rmdir()
        (temp / CARD_FILE).write_text(card, encoding="utf-8")
    return Path(out)
