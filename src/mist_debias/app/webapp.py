"""``mist app``: an interactive page to move an edit's cell weights, see the re-solved edit, and save it.

The page loads a pipeline and an edit (an edit file or a run folder's ``edit.safetensors``), rebuilds the
edit's :class:`~mist_debias.core.targets.EditProblem` from the file's metadata (concepts, attribute prompts,
method, keys, hyperparameters, preserve prompts) and factors ``A`` once. Each weight change only re-solves

    W' − W₀ = L R,    L = η_e (V*(w) − W₀ C),    R = Cᵀ A⁻¹ (fixed),

from the original weights ``W₀`` (a few small products per layer, milliseconds). *Generate* draws the same
seeds once without and once with the solved edit, classifies every image into the concept's cells, and shows
both image sets side by side with their cell distributions (simultaneous intervals, Δ to the target). *Save*
writes the edit with the weights on the sliders, atomically and in the format of ``mist edit``.

All logic lives in plain functions and :class:`EditSession`; :func:`build_page` only wires them to Gradio.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from mist_debias.core.edit import Edit
from mist_debias.core.errors import MistError
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.prompts import strip_article
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.spec import AttributeSpec
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.loop.config import RunConfig
from mist_debias.loop.debias import RunFolder
from mist_debias.loop.profile import ModelProfile
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.metrics import Distribution

DISPLAY_SIDE = 128
"""Images smaller than this are enlarged (nearest neighbour) for the page; the world draws 32×32 glyphs."""


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ModelChoice:
    """A MODEL argument resolved: the folder or hub id to load, its default sampler, and its model profile."""

    path: str
    generation: GenerationConfig
    profile: ModelProfile | None


def resolve_model(model: str) -> ModelChoice:
    """A profile's name or folder (``world``) → its pipeline with its sampler; anything else → itself with
    :class:`GenerationConfig`'s defaults."""
    from mist_debias.app.models import resolve_model as resolve_profile

    path, profile = resolve_profile(model)
    if profile is None:
        return ModelChoice(path, GenerationConfig(), None)
    sampler = profile.sampler
    generation = GenerationConfig(steps=sampler.steps, guidance=sampler.guidance, eta=sampler.eta)
    return ModelChoice(path, generation, profile)


@dataclass(frozen=True)
class EditSource:
    """An edit to start from: the file, the edit, and the run's settings when it came from a run folder."""

    path: Path
    edit: Edit
    run_config: RunConfig | None = None


def load_edit_source(path: Path) -> EditSource:
    """Read an edit file, or a run folder's ``edit.safetensors`` with the run's ``config.json``."""
    path = Path(path)
    if not path.is_dir():
        return EditSource(path, Edit.load(path))
    folder = RunFolder(path)
    if not folder.is_run():
        raise MistError(f"{path} is a folder but not a run folder of mist debias")
    if not folder.edit.is_file():
        raise MistError(f"run folder {path} has no edit.safetensors yet (the run has not finished)")
    saved = folder.read_config()
    return EditSource(folder.edit, Edit.load(folder.edit), RunConfig.from_dict(saved.get("run", {})))


@dataclass(frozen=True)
class AppConcept:
    """One edited concept: display name, edit prompts, the cells its images are classified into, weights."""

    name: str
    prompts: ConceptPrompts
    spec: AttributeSpec
    weights: tuple[float, ...]


def cell_phrases(prompt: str, attributes: Sequence[str]) -> list[str]:
    """Cell phrases of an edit without a recorded spec: the attribute prompts less the words they share with
    the concept prompt at the start, and a leading article (``"a photo of a doctor"`` with ``"a photo of a
    woman"`` → ``"woman"``). Where that leaves a phrase empty, the attribute prompts are used as they are."""
    word_lists = [text.split() for text in (prompt, *attributes)]
    shared = 0
    while all(len(words) > shared for words in word_lists) and len({w[shared] for w in word_lists}) == 1:
        shared += 1
    phrases = [strip_article(" ".join(words[shared:])) for words in word_lists[1:]]
    return phrases if all(phrases) else list(attributes)


def concepts_of(info: Mapping[str, Any]) -> list[AppConcept]:
    """The concepts recorded in an edit file's metadata (a run's spec, else cells from the attribute prompts with
    a uniform target)."""
    records = info.get("concepts")
    if not records:
        raise MistError("the edit file records no concepts, so it cannot be re-solved")
    concepts = []
    for record in records:
        try:
            prompts = ConceptPrompts(record["prompt"], tuple(record["attributes"]))
            weights = tuple(float(w) for w in record["weights"])
        except (KeyError, TypeError, ValueError):
            raise MistError("the edit file's concepts lack a prompt, attribute prompts or weights") from None
        if len(weights) != len(prompts.attributes):
            raise MistError(f"concept {prompts.prompt!r}: {len(prompts.attributes)} attributes, {len(weights)} weights")
        if "spec" in record:
            spec = AttributeSpec.from_dict(record["spec"])
        else:
            spec = AttributeSpec.from_phrases(cell_phrases(prompts.prompt, prompts.attributes))
        if spec.num_cells != len(weights):
            raise MistError(f"concept {prompts.prompt!r}: {spec.num_cells} cells but {len(weights)} weights")
        concepts.append(AppConcept(record.get("name", prompts.prompt), prompts, spec, weights))
    return concepts


def problem_from_info(encoder: PromptEncoder, info: Mapping[str, Any], concepts: Sequence[AppConcept]) -> EditProblem:
    """The :class:`EditProblem` the edit was solved with, rebuilt from its metadata (encodes the prompts and
    factors ``A`` once)."""
    recorded = info.get("hyperparameters", {})
    hparams = EditHyperparameters(
        **{k: float(recorded[k]) for k in ("lam", "edit_scale", "preserve_scale") if k in recorded}
    )
    return EditProblem(
        encoder,
        [concept.prompts for concept in concepts],
        method=info.get("method", "mist"),
        keys=info.get("keys"),
        preserve_prompts=info.get("preserve_prompts", [""]),
        hparams=hparams,
        mist_form=info.get("mist_form", "paper"),
    )


def split_weights(values: Sequence[float], concepts: Sequence[AppConcept]) -> list[list[float]]:
    """The page's flat list of slider values → one weight list per concept."""
    sizes = [len(concept.weights) for concept in concepts]
    if len(values) != sum(sizes):
        raise MistError(f"{sum(sizes)} weights expected, got {len(values)}")
    weights = [float(v) for v in values]
    if not all(math.isfinite(w) for w in weights):
        raise MistError("weights must be finite numbers")
    bounds = itertools.accumulate(sizes, initial=0)
    return [weights[start:end] for start, end in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Comparison:
    """One concept on the same seeds: images and cell distributions without and with the edit."""

    concept: AppConcept
    seeds: tuple[int, ...]
    original: list[Image.Image]
    edited: list[Image.Image]
    original_labels: list[str]
    edited_labels: list[str]
    before: Distribution
    after: Distribution


def check_fits(edit: Edit, pipe: DiffusionPipeline) -> None:
    """Raise :class:`~mist_debias.core.errors.EditFileError` (the CLI's message) unless ``edit`` was solved on
    ``pipe``: applying checks its layers and base fingerprint, and reverting restores the weights bit-exactly."""
    edit.apply(pipe).revert()


class EditSession:
    """A pipeline with an edit's problem built once: re-solve any weights, compare images, save.

    Construction refuses an edit made for another model (the fingerprint check of
    :meth:`~mist_debias.core.edit.Edit.apply`, with its message). :meth:`compare` is serialised by a lock,
    since it applies the edit to the shared pipeline in place.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        source: EditSource,
        classifier: CellClassifier,
        generation: GenerationConfig,
    ) -> None:
        check_fits(source.edit, pipe)
        self.pipe = pipe
        self.source = source
        self.classifier = classifier
        self.generation = generation
        self.concepts = concepts_of(source.edit.info)
        layers = set(source.edit.layer_names)
        projections = [p for p in find_cross_attention_projections(pipe.unet) if p.name in layers]
        self.original = {p.name: p.module.weight.detach().to(torch.float64).clone() for p in projections}
        self.problem = problem_from_info(PromptEncoder(pipe), source.edit.info, self.concepts)
        self._original_images: dict[str, tuple[tuple[int, ...], list[Image.Image]]] = {}
        self._lock = threading.Lock()

    @property
    def initial_weights(self) -> list[list[float]]:
        return [list(concept.weights) for concept in self.concepts]

    def solve(self, weights: Sequence[Sequence[float]]) -> Edit:
        """The edit for per-concept cell weights, solved from ``W₀``; its metadata records the weights (a run's
        controller record is dropped: the weights are no longer the controller's)."""
        update = self.problem.solve(self.original, weights)
        info = {key: value for key, value in self.source.edit.info.items() if key != "controller"}
        info["concepts"] = [
            {**record, "weights": [float(w) for w in concept_weights]}
            for record, concept_weights in zip(self.source.edit.info["concepts"], weights, strict=True)
        ]
        return Edit(update.right, dict(update.left), self.source.edit.base_fingerprint, info)

    def reproduces_source(self) -> bool:
        """Whether re-solving the file's own weights gives the file's edit (False for compounded increments)."""
        solved = self.solve(self.initial_weights)
        return solved.layer_names == self.source.edit.layer_names and all(
            torch.allclose(solved.delta(name), self.source.edit.delta(name), rtol=1e-4, atol=1e-6)
            for name in solved.layer_names
        )

    def _images(self, prompt: str, seeds: tuple[int, ...]) -> list[Image.Image]:
        return generate_images(self.pipe, [prompt] * len(seeds), seeds, self.generation)

    def _originals(self, prompt: str, seeds: tuple[int, ...]) -> list[Image.Image]:
        """Unedited images of ``prompt`` on ``seeds``; the last seeds of each prompt are cached."""
        cached_seeds, images = self._original_images.get(prompt, ((), []))
        if cached_seeds != seeds:
            images = self._images(prompt, seeds)
            self._original_images[prompt] = (seeds, images)
        return images

    def _classify(self, images: list[Image.Image], spec: AttributeSpec) -> tuple[Distribution, list[str]]:
        predictions = self.classifier.classify(images, spec)
        labels = [spec.phrases[k] if k >= 0 else "unclassified" for k in predictions.labels]
        distribution = Distribution.from_counts(
            predictions.counts(), spec.target, n_invalid=int((~predictions.valid).sum())
        )
        return distribution, labels

    def compare(self, weights: Sequence[Sequence[float]], seeds: Sequence[int]) -> list[Comparison]:
        """Every concept on ``seeds`` without and with the edit solved for ``weights``."""
        seeds = tuple(int(s) for s in seeds)
        if not seeds:
            raise MistError("at least one seed is needed")
        edit = self.solve(weights)
        with self._lock:
            originals = [self._originals(concept.prompts.prompt, seeds) for concept in self.concepts]
            with edit.applied(self.pipe):
                edited = [self._images(concept.prompts.prompt, seeds) for concept in self.concepts]
        comparisons = []
        for concept, before_images, after_images in zip(self.concepts, originals, edited, strict=True):
            before, before_labels = self._classify(before_images, concept.spec)
            after, after_labels = self._classify(after_images, concept.spec)
            comparisons.append(
                Comparison(concept, seeds, before_images, after_images, before_labels, after_labels, before, after)
            )
        return comparisons

    def save(self, weights: Sequence[Sequence[float]], path: Path, force: bool = False) -> Edit:
        """Solve ``weights`` and write the edit to ``path`` (atomic; refuses an existing file unless ``force``)."""
        edit = self.solve(weights)
        edit.save(Path(path), force=force)
        return edit


# ------------------------------------------------------------------------------------------------- text


def _percent(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _number(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3f}"


def distribution_table(comparison: Comparison) -> str:
    """Markdown: per cell the target and the original and edited shares with their simultaneous intervals."""
    before, after = comparison.before, comparison.after
    level = f"{100 * (1 - before.alpha):.0f}%"
    lines = [
        f"**{comparison.concept.name}** — {len(comparison.seeds)} images per side, seeds "
        f"{comparison.seeds[0]}–{comparison.seeds[-1]}",
        "",
        f"| cell | target | original ({level} interval) | edited ({level} interval) |",
        "|---|---|---|---|",
    ]
    for j, phrase in enumerate(comparison.concept.spec.phrases):
        lines.append(
            f"| {phrase} | {_percent(before.target[j])} "
            f"| {_percent(before.ratios[j])} ({_percent(before.lower[j])}–{_percent(before.upper[j])}) "
            f"| {_percent(after.ratios[j])} ({_percent(after.lower[j])}–{_percent(after.upper[j])}) |"
        )
    lines += [
        f"| unclassified | | {before.n_invalid} | {after.n_invalid} |",
        f"| Δ to target | | {_number(before.deviation)} | {_number(after.deviation)} |",
    ]
    return "\n".join(lines)


def weights_text(concepts: Sequence[AppConcept], weights: Sequence[Sequence[float]]) -> str:
    """``doctor: man +0.120, woman −0.300`` per concept."""
    return "; ".join(
        f"{concept.name}: " + ", ".join(f"{p} {w:+.3f}" for p, w in zip(concept.spec.phrases, ws, strict=True))
        for concept, ws in zip(concepts, weights, strict=True)
    )


def for_display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """Enlarge a small image by a whole factor (nearest neighbour) so that its shorter side reaches ``side``."""
    factor = max(1, math.ceil(side / min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def gallery_items(images: Sequence[Image.Image], seeds: Sequence[int], labels: Sequence[str]) -> list[tuple]:
    """Gallery entries: each image (enlarged) with its seed and the classifier's cell as caption."""
    return [
        (for_display(image), f"seed {seed}: {label}") for image, seed, label in zip(images, seeds, labels, strict=True)
    ]


def slider_bound(weights: Sequence[float]) -> float:
    """Half-width of the sliders: at least 1, else twice the largest recorded weight (rounded up)."""
    return float(max(1, math.ceil(2 * max((abs(w) for w in weights), default=0.0))))


def default_output(source: EditSource) -> Path:
    """Where *Save* writes unless told otherwise: next to the source edit, ``<name>-app.safetensors``."""
    return source.path.with_name(f"{source.path.stem}-app.safetensors")


# ------------------------------------------------------------------------------------------------- page


def require_gradio():
    """The ``gradio`` module, or a one-line error naming the extra that installs it."""
    try:
        import gradio
    except ImportError:
        raise MistError("mist app needs gradio: pip install 'mist-debias[app]'") from None
    return gradio


def build_page(session: EditSession, out: Path, description: str = ""):
    """The Gradio page of ``session``: one slider per concept cell, *Generate*, galleries and tables, *Save*."""
    gr = require_gradio()

    concepts = session.concepts
    bound = slider_bound([w for c in concepts for w in c.weights])
    with gr.Blocks(title="mist app", analytics_enabled=False) as page:
        gr.Markdown(f"## mist app\n{description}", elem_id="description")
        sliders = []
        for i, concept in enumerate(concepts):
            gr.Markdown(f"### {concept.name}\nconcept prompt: `{concept.prompts.prompt}`")
            with gr.Row():
                for j, (phrase, weight) in enumerate(zip(concept.spec.phrases, concept.weights, strict=True)):
                    sliders.append(
                        gr.Slider(
                            -bound,
                            bound,
                            value=weight,
                            step=0.001,
                            label=f"weight: {phrase}",
                            elem_id=f"weight-{i}-{j}",
                        )
                    )
        solve_status = gr.Markdown(
            "weights of the file: " + weights_text(concepts, session.initial_weights), elem_id="solve-status"
        )
        with gr.Row():
            first_seed = gr.Number(value=0, precision=0, label="first seed", elem_id="first-seed")
            count = gr.Number(value=8, precision=0, minimum=1, label="images per side", elem_id="image-count")
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
        galleries, tables = [], []
        for i, concept in enumerate(concepts):
            with gr.Row():
                galleries.append(
                    gr.Gallery(label=f"{concept.name}: original", columns=4, height="auto", elem_id=f"original-{i}")
                )
                galleries.append(
                    gr.Gallery(label=f"{concept.name}: edited", columns=4, height="auto", elem_id=f"edited-{i}")
                )
            tables.append(gr.Markdown(elem_id=f"distribution-{i}"))
        with gr.Row():
            path = gr.Textbox(value=str(out), label="save as", elem_id="save-path")
            replace = gr.Checkbox(value=False, label="replace an existing file", elem_id="save-replace")
            save = gr.Button("Save edit", elem_id="save")
        save_status = gr.Markdown(elem_id="save-status")

        def on_weights(*values):
            try:
                weights = split_weights(values, concepts)
                start = time.perf_counter()
                edit = session.solve(weights)
                elapsed = time.perf_counter() - start
            except MistError as error:
                return f"error: {error}"
            return (
                f"re-solved in {1000 * elapsed:.0f} ms (rank {edit.rank}, {len(edit.layer_names)} layers): "
                + weights_text(concepts, weights)
            )

        def on_generate(*values):
            *weight_values, seed, n = values
            try:
                weights = split_weights(weight_values, concepts)
                if n is None or int(n) < 1:
                    raise MistError("images per side must be at least 1")
                comparisons = session.compare(weights, range(int(seed or 0), int(seed or 0) + int(n)))
            except MistError as error:
                return [gr.skip()] * (len(galleries) + len(tables)) + [f"error: {error}"]
            images, texts = [], []
            for comparison in comparisons:
                images.append(gallery_items(comparison.original, comparison.seeds, comparison.original_labels))
                images.append(gallery_items(comparison.edited, comparison.seeds, comparison.edited_labels))
                texts.append(distribution_table(comparison))
            return [*images, *texts, "generated with " + weights_text(concepts, weights)]

        def on_save(*values):
            *weight_values, target, force = values
            try:
                weights = split_weights(weight_values, concepts)
                if not str(target).strip():
                    raise MistError("give a file name to save to")
                session.save(weights, Path(str(target).strip()).expanduser(), force=bool(force))
            except MistError as error:
                return f"error: {error}"
            return f"saved {str(target).strip()} ({weights_text(concepts, weights)})"

        # one listener for every slider, run one at a time: the status always ends on the latest weights
        gr.on(
            [slider.change for slider in sliders],
            on_weights,
            inputs=sliders,
            outputs=solve_status,
            trigger_mode="always_last",
            concurrency_limit=1,
        )
        generate.click(on_generate, inputs=[*sliders, first_seed, count], outputs=[*galleries, *tables, solve_status])
        save.click(on_save, inputs=[*sliders, path, replace], outputs=save_status)
    return page


def describe(session: EditSession, model: str) -> str:
    """The page's header: model, edit, sampler, classifier, and whether sliders reproduce the file's edit."""
    g = session.generation
    lines = [
        f"model `{model}` · edit `{session.source.path}` · {session.source.edit.info.get('method', 'mist')} "
        f"({session.problem.keys} keys, {len(session.original)} layers)",
        f"sampler: {g.steps} steps, guidance {g.guidance}, η {g.eta} · classifier: {type(session.classifier).__name__}",
    ]
    if not session.reproduces_source():
        lines.append(
            "This edit was compounded from increments (official controller); the sliders re-solve from the "
            "original model, so the file's own weights do not reproduce it exactly."
        )
    return "\n\n".join(lines)


@dataclass(frozen=True)
class AppOptions:
    """Settings of ``mist app`` (see the command's help)."""

    model: str = "world"
    edit: Path = Path("edit.safetensors")
    out: Path | None = None
    classifier: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None


def open_session(options: AppOptions) -> EditSession:
    """Load the edit, the model and the classifier, and build the session (refusing an edit of another model)."""
    from mist_debias.core.pipeline import default_device, load_pipeline
    from mist_debias.loop.runner import resolve_classifier

    source = load_edit_source(options.edit)
    choice = resolve_model(options.model)
    generation = choice.generation
    run_config = source.run_config or RunConfig()
    if source.run_config is not None:
        generation = source.run_config.generation.generation_config()
    device = torch.device(options.device) if options.device else default_device()
    pipe = load_pipeline(choice.path, device=device)
    check_fits(source.edit, pipe)  # before loading a classifier, which may need the hub
    classifier_name = options.classifier or run_config.classifier.drive
    classifier = resolve_classifier(classifier_name, choice.profile, run_config, device)
    return EditSession(pipe, source, classifier, generation)


def serve(options: AppOptions, block: bool = True):
    """Start the page on ``options.host``; returns the Gradio app (``block=False`` returns after starting)."""
    require_gradio()
    session = open_session(options)
    page = build_page(session, options.out or default_output(session.source), describe(session, options.model))
    page.launch(server_name=options.host, server_port=options.port, prevent_thread_lock=not block, quiet=not block)
    return page
