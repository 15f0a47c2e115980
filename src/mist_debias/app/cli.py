"""The ``mist`` command line: edit, export, generate, info (and the debias, world, evaluate, report groups).

Every user error ends the process with one ``error: …`` line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mist_debias import __version__
from mist_debias.app.choices import (
    BatchSizeOption,
    ControllerChoice,
    DtypeChoice,
    EtaOption,
    GuidanceOption,
    HeightOption,
    KeysChoice,
    MethodChoice,
    NegativePromptOption,
    PreserveChoice,
    StepsOption,
    WidthOption,
)
from mist_debias.app.environment import choose_threads, quiet_libraries
from mist_debias.app.evaluate_cli import evaluate_command, report_command
from mist_debias.app.models import MODEL_HELP, generation_config, resolve_model, sampler_defaults
from mist_debias.app.output import stderr_console, stdout_console
from mist_debias.core.errors import MistError
from mist_debias.world.cli import world_app

app = typer.Typer(
    name="mist",
    help="Closed-form single and intersectional debiasing of Stable Diffusion models (MIST).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class ExportFormat(str, Enum):
    diffusers = "diffusers"
    lora = "lora"


def parse_weights(text: str) -> list[float]:
    """``"0.2,-0.1"`` → ``[0.2, -0.1]``; rejects empty items and NaN/inf."""
    try:
        weights = [float(item) for item in text.split(",")]
    except ValueError:
        raise MistError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(w) for w in weights):
        raise MistError(f"--weights must be finite numbers, got {text!r}")
    return weights


def _load(model: str, device: str | None, dtype: DtypeChoice):
    from mist_debias.core.pipeline import DTYPES, load_pipeline

    return load_pipeline(model, device=device, torch_dtype=DTYPES[dtype.value])


@app.command()
def edit(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    concept: Annotated[list[str], typer.Option("--concept", help="Concept prompt to edit (repeatable).")],
    attribute: Annotated[list[str], typer.Option("--attribute", help="Attribute prompt (repeatable, in order).")],
    weights: Annotated[str, typer.Option("--weights", help="One weight per attribute: W1,W2,...")],
    out: Annotated[Path, typer.Option("--out", help="Edit file to write (.safetensors).")],
    lam: Annotated[float | None, typer.Option("--lam", help="λ: 0.5 (mist, uce), 0.1 (time).")] = None,
    edit_scale: Annotated[float, typer.Option("--edit-scale", help="η_e.")] = 1.0,
    preserve_scale: Annotated[float, typer.Option("--preserve-scale", help="η_p.")] = 0.2,
    preserve: Annotated[list[str] | None, typer.Option("--preserve", help="Extra preserve prompt.")] = None,
    no_empty_preserve: Annotated[bool, typer.Option("--no-empty-preserve", help='Drop "" from preserve.')] = False,
    method: Annotated[MethodChoice, typer.Option("--method")] = MethodChoice.mist,
    keys: Annotated[KeysChoice | None, typer.Option("--keys", help="Default: eos (mist), last-word (uce).")] = None,
    running_norm: Annotated[
        bool, typer.Option("--running-norm", help="Scale by the running target's norm (official code).")
    ] = False,
    projections: Annotated[str, typer.Option("--projections", help="k, v or k,v.")] = "k,v",
    device: Annotated[str | None, typer.Option("--device")] = None,
    dtype: Annotated[DtypeChoice, typer.Option("--dtype")] = DtypeChoice.float32,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
) -> None:
    """Solve one closed-form edit with given weights (no feedback loop) and save it."""
    from mist_debias.core.atomic import check_output_path
    from mist_debias.core.families import find_projections
    from mist_debias.core.solve import EditHyperparameters
    from mist_debias.core.targets import ConceptPrompts
    from mist_debias.core.transformer_edit import edit_problem, family_info

    weight_list = parse_weights(weights)
    if len(weight_list) != len(attribute):
        raise MistError(f"{len(attribute)} --attribute prompts but {len(weight_list)} --weights")
    concepts = [ConceptPrompts(prompt, tuple(attribute)) for prompt in concept]
    hparams = EditHyperparameters(lam=lam, edit_scale=edit_scale, preserve_scale=preserve_scale).for_method(
        method.value
    )
    check_output_path(out, force)
    model, _ = resolve_model(model)
    pipe = _load(model, device, dtype)
    layers = find_projections(pipe, projections=[p.strip() for p in projections.split(",")])
    preserve_prompts = ([] if no_empty_preserve else [""]) + list(preserve or [])
    problem = edit_problem(
        pipe,
        concepts,
        method=method.value,
        keys=keys.value if keys else None,
        preserve_prompts=preserve_prompts,
        hparams=hparams,
        mist_form="running" if running_norm else "paper",
    )
    update = problem.solve({p.name: p.module.weight.detach() for p in layers}, [weight_list] * len(concepts))
    from mist_debias.core.edit import Edit

    info = {
        "base_model": model,
        **family_info(pipe, problem),
        "method": method.value,
        "keys": problem.keys,
        "mist_form": problem.mist_form,
        "hyperparameters": {"lam": hparams.lam, "edit_scale": edit_scale, "preserve_scale": preserve_scale},
        "preserve_prompts": preserve_prompts,
        "concepts": [{"prompt": c.prompt, "attributes": list(c.attributes), "weights": weight_list} for c in concepts],
    }
    Edit.from_update(update, layers, info).save(out, force=force)
    stderr_console().print(f"wrote {out} (rank {problem.rank_bound}, {len(layers)} layers)")


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Base model the edit was solved on: " + MODEL_HELP)],
    edit_file: Annotated[Path, typer.Argument(help="Edit file (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write.")],
    format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.diffusers,
    scale: Annotated[float, typer.Option("--scale", help="Strength α of the edit.")] = 1.0,
    device: Annotated[str | None, typer.Option("--device")] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Export an edit as a diffusers LoRA folder (with a README.md model card) or as a complete pipeline with the
    edit baked in."""
    from mist_debias.core.atomic import check_output_path
    from mist_debias.core.edit import Edit

    loaded = Edit.load(edit_file)
    check_output_path(out, force)
    model, _ = resolve_model(model)
    pipe = _load(model, device, DtypeChoice.float32)
    if format is ExportFormat.lora:
        from mist_debias.app.model_card import export_lora_with_card

        export_lora_with_card(loaded, pipe, out, model, edit_file, scale=scale, force=force)
    else:
        loaded.export_pipeline(pipe, out, scale=scale, force=force)
    stderr_console().print(f"wrote {out} ({format.value})")


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    prompt: Annotated[str, typer.Option("--prompt")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write PNGs and manifest.json into.")],
    edit_file: Annotated[Path | None, typer.Option("--edit", help="Edit file to apply first.")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    eta: EtaOption = None,
    height: HeightOption = None,
    width: WidthOption = None,
    negative_prompt: NegativePromptOption = None,
    batch_size: BatchSizeOption = None,
    scale: Annotated[float, typer.Option("--scale", help="Strength α of the edit.")] = 1.0,
    device: Annotated[str | None, typer.Option("--device")] = None,
    dtype: Annotated[DtypeChoice, typer.Option("--dtype")] = DtypeChoice.float32,
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Generate N seeded images of one prompt, optionally with an edit applied."""
    from mist_debias.core.atomic import atomic_directory, check_output_path
    from mist_debias.core.edit import Edit
    from mist_debias.core.generate import generate_images

    if n <= 0:
        raise MistError(f"--n must be positive, got {n}")
    if not prompt.strip():
        raise MistError("--prompt is empty")
    model, profile = resolve_model(model)
    config = generation_config(profile, steps, guidance, eta, batch_size, height, width, negative_prompt)
    loaded = Edit.load(edit_file) if edit_file else None
    check_output_path(out, force)
    pipe = _load(model, device, dtype)
    from mist_debias.core.text import PromptEncoder

    PromptEncoder(pipe).tokenize(prompt)
    if loaded:
        loaded.apply(pipe, scale=scale)
    seeds = [seed + i for i in range(n)]
    images = generate_images(pipe, [prompt] * n, seeds, config)
    files = []
    with atomic_directory(out, force=force) as temp:
        for index, (image, image_seed) in enumerate(zip(images, seeds, strict=True)):
            name = f"{index:04d}_seed{image_seed}.png"
            image.save(temp / name)
            files.append({"file": name, "index": index, "seed": image_seed})
        manifest = {
            "model": model,
            "edit": str(edit_file) if edit_file else None,
            "scale": scale if edit_file else None,
            "prompt": prompt,
            "generation": config.to_dict(),
            "dtype": dtype.value,
            "images": files,
            "library_version": __version__,
        }
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    stderr_console().print(f"wrote {n} images to {out}")


@app.command()
def info(
    edit_file: Annotated[Path, typer.Argument(help="Edit file (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw metadata as JSON.")] = False,
) -> None:
    """Print an edit file's metadata."""
    from mist_debias.core.edit import Edit

    loaded = Edit.load(edit_file)
    metadata = loaded.metadata()
    if as_json:
        typer.echo(json.dumps(metadata, indent=2))
        return
    console = stdout_console()
    console.print(f"[bold]{edit_file}[/bold]  format {metadata['format']} v{metadata['format_version']}")
    for key in (
        "library_version",
        "base_model",
        "family",
        "max_sequence_length",
        "base_fingerprint",
        "method",
        "keys",
        "rank",
    ):
        if key in metadata:
            console.print(f"  {key}: {metadata[key]}")
    console.print(f"  layers: {len(metadata['layers'])}")
    for key in ("hyperparameters", "preserve_prompts"):
        if key in metadata:
            console.print(f"  {key}: {json.dumps(metadata[key])}")
    for concept in metadata.get("concepts", []):
        console.print(f"  concept {concept['prompt']!r}")
        for attribute, weight in zip(concept["attributes"], concept["weights"], strict=False):
            console.print(f"    {weight:+.4f}  {attribute}")


@app.command()
def debias(
    model: Annotated[str | None, typer.Argument(help=MODEL_HELP + " Default: the bundled synthetic world.")] = None,
    concept: Annotated[list[str] | None, typer.Option("--concept", help="Concept to debias (repeatable).")] = None,
    axis: Annotated[list[str] | None, typer.Option("--axis", help="Axis NAME=v1,v2,... (repeatable).")] = None,
    cell: Annotated[list[str] | None, typer.Option("--cell", help="Explicit cell phrase (repeatable).")] = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", help="p1,p2,... per cell, or AXIS=p1,... per axis.")
    ] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML/TOML/JSON run config.")] = None,
    controller: Annotated[ControllerChoice | None, typer.Option("--controller")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Largest allowed |r − t| (0.05).")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Cap on generated images.")] = None,
    classifier: Annotated[
        str | None, typer.Option("--classifier", help="CLIP id/folder, or 'oracle' (the model profile's own).")
    ] = None,
    grade_classifier: Annotated[
        str | None,
        typer.Option(
            "--grade-classifier",
            help="Independent grader of --validate and the fresh-seed numbers: CLIP id/folder or 'oracle'.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/debias"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run folder.")] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Run seed: runs with different seeds share no image seed (independent replicates)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance")] = None,
    eta: Annotated[float | None, typer.Option("--eta", help="DDIM η (0: deterministic DDIM).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    method: Annotated[MethodChoice | None, typer.Option("--method")] = None,
    keys: Annotated[KeysChoice | None, typer.Option("--keys")] = None,
    preserve: Annotated[
        PreserveChoice | None, typer.Option("--preserve", help="default | paper ('' only) | none.")
    ] = None,
    validate: Annotated[int, typer.Option("--validate", help="Images per concept on fresh seeds at the end.")] = 0,
    device: Annotated[str | None, typer.Option("--device")] = None,
    dtype: Annotated[DtypeChoice | None, typer.Option("--dtype", help="Default: float16 on CUDA.")] = None,
) -> None:
    """Debias concepts with the feedback loop and write the run folder (config, log, edit, summary)."""
    from mist_debias.loop.config import AttributesConfig, RunConfig, load_config
    from mist_debias.loop.runner import prepare_run

    if validate < 0:
        raise MistError(f"--validate must be ≥ 0, got {validate}")
    if budget is not None and budget <= 0:
        raise MistError(f"--budget must be > 0 images, got {budget}")
    config = load_config(config_file) if config_file else RunConfig()
    attributes = AttributesConfig.from_cli(axis or (), cell or (), target or ()) if (axis or cell) else None
    if target and not (axis or cell):
        raise MistError("--target needs --axis or --cell")
    _, profile = resolve_model(model if model is not None else config.model)
    sampler = {"steps": steps, "guidance": guidance, "eta": eta, "batch_size": batch_size}
    if config_file is None and profile is not None:
        # a profile's sampler, and its demo when no concepts are given
        if not concept and attributes is None and profile.demo_concepts:
            concept = list(profile.demo_concepts)
            attributes = AttributesConfig.from_cli(profile.demo_axes, (), ())
        sampler = sampler_defaults(profile, None, **sampler)
    config = config.with_overrides(
        {
            "model": model,
            "concepts": concept,
            "attributes": attributes,
            "controller.name": controller.value if controller else None,
            "tolerance": tolerance,
            "budget": budget,
            "classifier.drive": classifier,
            "classifier.evaluate": grade_classifier,
            "seed": seed,
            "generation.steps": sampler["steps"],
            "generation.guidance": sampler["guidance"],
            "generation.eta": sampler["eta"],
            "generation.batch_size": sampler["batch_size"],
            "generation.dtype": dtype.value if dtype else None,
            "edit.method": method.value if method else None,
            "edit.keys": keys.value if keys else None,
            "edit.preserve": preserve.value if preserve else None,
        }
    )
    run, replayed = prepare_run(config, out, resume=resume, force=force, device=device, profile=profile)
    console = stderr_console()
    preserved = [repr(p) for p in run.problem.preserve_prompts]
    console.print(
        f"run folder {out}; preserving {len(preserved)} prompts: {', '.join(preserved[:8])}"
        + (" …" if len(preserved) > 8 else "")
    )
    if replayed:
        console.print(f"resumed after {replayed} logged rounds ({run.controller.images_used} images)")
    from mist_debias.app.progress import DebiasProgress, other_axes_table, summary_table

    with DebiasProgress(run, console) as progress:
        run.run(on_round=progress.update)
    summary = run.finish(validate=validate)
    run.close()
    stdout_console().print(summary_table(summary))
    shifts = other_axes_table(summary)
    if shifts is not None:
        stdout_console().print(shifts)


app.command("evaluate")(evaluate_command)
app.command("report")(report_command)
app.add_typer(world_app, name="world")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors (:class:`~mist_debias.core.errors.MistError` and click's usage
    errors) print one line on stderr and exit with code 2. Any other exception is a bug and propagates with
    its traceback."""
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        # answered before typer, whose parameter conversion imports pydantic (a third of the start-up time)
        typer.echo(__version__)
        return
    quiet_libraries()
    choose_threads()
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    except MistError as error:
        sys.stderr.write(f"error: {_first_line(str(error)) or type(error).__name__}\n")
        sys.exit(2)
    except Exception as error:
        if not hasattr(error, "format_message"):  # a click/typer usage error (vendored or not)
            raise
        sys.stderr.write(f"error: {_first_line(error.format_message())}\n")
        sys.exit(2)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


@app.command("app")
def app_command(
    model: Annotated[
        str, typer.Argument(help="Hub id, local pipeline folder, or 'world' (the bundled world).")
    ] = "world",
    edit_file: Annotated[Path, typer.Option("--edit", help="Edit file or run folder to start from.")] = Path(
        "runs/debias"
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Default file for Save (NAME-app.safetensors).")] = None,
    classifier: Annotated[str | None, typer.Option("--classifier", help="CLIP id/folder or 'oracle'.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Local port (default: Gradio's).")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
) -> None:
    """Interactive page: move each cell's weight, compare original and edited images on the same seeds, save."""
    from mist_debias.app.webapp import AppOptions, serve

    serve(AppOptions(model, edit_file, out, classifier, device, port=port))
