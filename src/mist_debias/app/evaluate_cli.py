"""``mist evaluate`` and ``mist report``: the evaluation and report commands of the ``mist`` command line.

:func:`evaluate_command` and :func:`report_command` are registered on the ``mist`` app in
:mod:`mist_debias.app.cli`. User errors raise :class:`~mist_debias.core.errors.MistError` (one line; the ``mist`` entry
point prints it and exits with 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mist_debias.app.choices import (
    BatchSizeOption,
    ClassifyModeChoice,
    DtypeChoice,
    EtaOption,
    GuidanceOption,
    HeightOption,
    NegativePromptOption,
    StepsOption,
    WidthOption,
)
from mist_debias.app.models import MODEL_HELP, generation_config, resolve_model
from mist_debias.app.output import stderr_console
from mist_debias.core.errors import MistError

if TYPE_CHECKING:
    from rich.console import Console


def edited_prompts(info: dict) -> tuple[str, ...]:
    """The concept prompts (and concept names, when recorded) an edit file's metadata lists."""
    found = []
    for concept in info.get("concepts") or []:
        found.extend(str(concept[key]) for key in ("prompt", "name") if concept.get(key))
    return tuple(dict.fromkeys(found))


def select_concepts(records: list, concepts: list[str]) -> list:
    """Keep the records of the named concepts (case-insensitive); an unknown name is an error."""
    if not concepts:
        return records
    wanted = {concept.strip().lower() for concept in concepts}
    known = {record.concept.lower() for record in records}
    unknown = sorted(wanted - known)
    if unknown:
        raise MistError(f"the prompt set has no concept {unknown[0]!r}")
    return [record for record in records if record.concept.lower() in wanted]


def evaluate_command(
    model: Annotated[str, typer.Argument(help="The original model: " + MODEL_HELP)],
    prompts: Annotated[str, typer.Option("--prompts", help="Built-in prompt set name or a CSV/YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Evaluation folder to write.")],
    edit_file: Annotated[
        list[Path] | None, typer.Option("--edit", help="Edit file to evaluate against the original (repeatable).")
    ] = None,
    n: Annotated[
        int, typer.Option("--n", "--num-images", help="Images per prompt and model (--num-images under torchrun).")
    ] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Base seed: image i of prompt p uses seed + p·n + i.")] = 0,
    classifier: Annotated[
        str | None,
        typer.Option(
            "--classifier",
            help="CLIP id or folder, or 'oracle' (the model profile's own). Default: the profile's, else CLIP B/32.",
        ),
    ] = None,
    classifier_mode: Annotated[ClassifyModeChoice, typer.Option("--classifier-mode")] = ClassifyModeChoice.joint,
    axis: Annotated[list[str] | None, typer.Option("--axis", help="Axis NAME=v1,v2,... (repeatable).")] = None,
    cell: Annotated[list[str] | None, typer.Option("--cell", help="Explicit cell phrase (repeatable).")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", help="p1,p2,... or AXIS=p1,p2,...")] = None,
    concept: Annotated[
        list[str] | None, typer.Option("--concept", help="Evaluate only these concepts of the set (repeatable).")
    ] = None,
    confusion: Annotated[
        Path | None, typer.Option("--confusion", help="Classifier confusion matrix (CSV/JSON) for CLEAM.")
    ] = None,
    clip_model: Annotated[
        str | None, typer.Option("--clip-model", help="CLIP hub id or folder for CLIP scores (optional).")
    ] = None,
    change_threshold: Annotated[
        float, typer.Option("--change-threshold", help="Mean |Δpixel| (0–1) above which an image counts changed.")
    ] = 0.02,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    eta: EtaOption = None,
    height: HeightOption = None,
    width: WidthOption = None,
    negative_prompt: NegativePromptOption = None,
    batch_size: BatchSizeOption = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    dtype: Annotated[DtypeChoice, typer.Option("--dtype")] = DtypeChoice.float32,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted evaluation.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing evaluation folder.")] = False,
) -> None:
    """Generate with the original and each edited model on the same seeds, classify, and measure.

    Runs in one process, or split across processes under torchrun / accelerate launch. (torchrun reads the
    abbreviation ``--n`` as one of its own options; spell it ``--num-images`` there.)
    """
    from mist_debias.core.edit import Edit
    from mist_debias.core.prompts import resolve_prompt_set
    from mist_debias.core.spec import spec_from_cli
    from mist_debias.loop.profile import ORACLE, own_classifier
    from mist_debias.measure.distributed import current_processes
    from mist_debias.measure.evaluate import (
        CLASSIFY_CHUNK,
        ORIGINAL,
        EvaluationPlan,
        ModelVariant,
        check_folder,
        chunked,
        load_confusion,
        run_evaluation,
        variant_names,
    )

    if resume and force:
        raise MistError("give --resume or --force, not both")
    if n <= 0:
        raise MistError(f"--n must be positive, got {n}")
    records = select_concepts(resolve_prompt_set(prompts), list(concept or []))
    spec = spec_from_cli(axis or [], cell or [], target or [])
    typed_model = model
    model, profile = resolve_model(model)
    generation = generation_config(profile, steps, guidance, eta, batch_size, height, width, negative_prompt)
    if classifier is None:
        from mist_debias.measure.classifiers.clip import DEFAULT_CLIP_MODEL

        classifier = ORACLE if profile is not None and profile.classifier is not None else DEFAULT_CLIP_MODEL
    classifier_factory = own_classifier(profile, typed_model) if classifier == ORACLE else None
    matrix = load_confusion(confusion, spec) if confusion else None
    edits = [Edit.load(path) for path in edit_file or []]
    names = variant_names(edit_file or [])
    variants = [ModelVariant(ORIGINAL)] + [
        ModelVariant(name, str(path), edited_prompts(edit.info))
        for name, path, edit in zip(names, edit_file or [], edits, strict=True)
    ]
    plan = EvaluationPlan(
        model=model,
        variants=tuple(variants),
        prompts=tuple(records),
        n=n,
        seed=seed,
        spec=spec,
        classifier=classifier,
        generation=generation,
        change_threshold=change_threshold,
        confusion=None if matrix is None else tuple(map(tuple, matrix.tolist())),
        clip_model=clip_model,
    )
    processes = current_processes(device)
    fresh = check_folder(out, plan, resume, force)
    from mist_debias.core.families import require_unet
    from mist_debias.core.pipeline import DTYPES, load_pipeline

    pipe = load_pipeline(model, device=processes.device, torch_dtype=DTYPES[dtype.value])
    require_unet(pipe, "mist evaluate")
    for edit in edits:
        edit.apply(pipe).revert()  # raises EditFileError when the edit belongs to another base model
    from mist_debias.measure.classifiers.loading import load_classifier

    if classifier_factory is not None:
        cell_classifier = classifier_factory(pipe.device)
    else:
        cell_classifier = load_classifier(classifier, pipe.device, classifier_mode.value)
    scorer = None
    if clip_model:
        from mist_debias.measure.clip_score import CLIPScorer

        scorer = CLIPScorer.load(clip_model, device=pipe.device)
    processes.barrier()

    console = stderr_console()
    total = len(plan.items())
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not processes.is_main,
    )
    with bars:
        share = f" (process 1 of {processes.count})" if processes.count > 1 else ""
        totals = {
            "generate": sum(map(len, processes.share(plan.batches()))),
            "classify": sum(map(len, processes.share(chunked(plan.items(), CLASSIFY_CHUNK)))),
        }
        tasks = {stage: bars.add_task(f"{stage} images{share}", total=total) for stage, total in totals.items()}

        def progress(stage: str, images: int) -> None:
            bars.advance(tasks[stage], images)

        outcome = run_evaluation(
            plan,
            out,
            pipe,
            dict(zip(names, edits, strict=True)),
            cell_classifier,
            processes=processes,
            fresh=fresh,
            progress=progress,
            scorer=scorer,
        )
    if processes.is_main:
        print_summary(console, outcome.metrics)
        generated = outcome.metrics["run"]["per_process"]
        made = sum(p["images"] for p in generated)
        console.print(f"wrote {out} ({total} images, {made} generated now, {processes.count} process(es))")


def print_summary(console: Console, metrics: dict) -> None:
    """A terminal table: per concept and model, n, Δ with the joint ratios, and preservation verdicts."""
    from rich.table import Table

    table = Table(title="cell distributions (95% simultaneous intervals)")
    for column in ("concept", "model", "n", "Δ", "ratios"):
        table.add_column(column)
    for entry in metrics["distributions"]:
        joint = entry["joint"]
        ratios = ", ".join(
            f"{r:.2f} [{lo:.2f}, {hi:.2f}]" if r is not None else "–"
            for r, lo, hi in zip(joint["ratios"], joint["lower"], joint["upper"], strict=True)
        )
        delta = "–" if joint["deviation"] is None else f"{joint['deviation']:.3f}"
        name = entry["model"] + (" (edited)" if entry["edited"] else "")
        table.add_row(entry["concept"], name, str(joint["n"]), delta, ratios)
    console.print(table)
    for entry in metrics["preservation"]:
        if entry["edited"]:
            continue
        verdict = "MOVED" if entry["moved"] else ("outside interval" if entry["outside_interval"] else "kept")
        console.print(
            f"  {entry['model']} on {entry['concept']}: pixel change {entry['pixel_change_mean']:.4f}, "
            f"{entry['fraction_changed']:.0%} images changed, distribution {verdict} "
            f"(paired p = {entry['mcnemar_p_adjusted']:.3g})"
        )


def report_command(
    sources: Annotated[list[Path], typer.Argument(help="Evaluation folder(s) and/or debias run folder(s).")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
    grid_images: Annotated[
        int, typer.Option("--grid-images", help="Images per concept in the before/after grids.")
    ] = 8,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing report.")] = False,
) -> None:
    """Write one self-contained HTML report (plots and image grids embedded)."""
    from mist_debias.app.report import build_report
    from mist_debias.core.atomic import check_output_path

    if grid_images < 0:
        raise MistError(f"--grid-images must be ≥ 0, got {grid_images}")
    check_output_path(out, force)
    build_report(sources, out, grid_images=grid_images, force=force)
    stderr_console().print(f"wrote {out}")
