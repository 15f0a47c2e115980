"""Built-in professions, prompt templates with correct articles, edit prompts and prompt sets.

Templates are ``str.format`` strings with two fields: ``{concept}`` (e.g. ``doctor``) and ``{a}``, its
indefinite article (``a``/``an``), so ``"a photo of {a} {concept}"`` gives ``"a photo of an engineer"``.

Edit prompts follow the official MIST code: the attribute prompt of a cell is the concept prompt with the
concept replaced by the cell's phrase (``text.replace(concept, attribute)`` there), so with the template
``"a photo of {a} {concept}"`` the concept prompt is ``"a photo of a doctor"`` and the cell prompts are
``"a photo of a young Asian woman"``…; the template ``"{concept}"`` reproduces the official bare phrases.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from mist_debias.core import choices
from mist_debias.core.errors import MistError, one_line
from mist_debias.core.spec import AttributeSpec

PROFESSIONS: tuple[str, ...] = (
    "attendant",
    "cashier",
    "teacher",
    "nurse",
    "assistant",
    "secretary",
    "cleaner",
    "receptionist",
    "clerk",
    "counselor",
    "designer",
    "hairdresser",
    "writer",
    "housekeeper",
    "baker",
    "librarian",
    "tailor",
    "driver",
    "supervisor",
    "janitor",
    "cook",
    "laborer",
    "construction worker",
    "developer",
    "carpenter",
    "manager",
    "lawyer",
    "farmer",
    "salesperson",
    "physician",
    "guard",
    "analyst",
    "mechanic",
    "sheriff",
    "CEO",
    "doctor",
    "chef",
)
"""The 37 professions of the official MIST and UCE debiasing sets."""

DEFAULT_EDIT_TEMPLATE = "a photo of {a} {concept}"
"""Template of the concept prompt whose keys are edited."""

EVALUATION_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {concept}",
    "a painting of {a} {concept}",
    "{a} {concept} working",
    "{a} {concept} laughing",
    "{a} {concept} in the workplace",
    "{a} {concept} digital art",
    "an image of {a} {concept}",
    "a picture of {a} {concept}",
    "a headshot of {a} {concept}",
    "a portrait of {a} {concept}",
    "{a} {concept} talking on the phone",
)
"""UCE's per-profession templates (validation prompt first, then the ten test prompts)."""

NON_PERSON_PROMPTS: tuple[str, ...] = (
    "a photo of a mountain lake at sunrise",
    "a bowl of fresh fruit on a wooden table",
    "a red sports car parked on a city street",
    "a cat sleeping on a sofa",
    "a lighthouse on a rocky coast",
    "a plate of pasta with tomato sauce",
    "a snowy forest in winter",
    "a vintage bicycle leaning against a brick wall",
    "a cup of coffee next to an open book",
    "a field of sunflowers under a blue sky",
    "a wooden cabin in the mountains",
    "a golden retriever running on a beach",
)
"""Scenes without people, for checking that an edit leaves unrelated prompts alone."""

PRESERVE_MODES = choices.PRESERVE_MODES
"""``default``: "" plus every unedited concept; ``paper``: "" only (the official MIST setting); ``none``."""

BUILTIN_PROMPT_SETS = ("professions", "professions-validation", "non-person")

_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)
# Vowel letters read with a consonant sound ("a university", "a one-off", "a European").
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "ura", "uro", "uti", "eu", "ewe", "one", "once", "ubiq")
# Silent h ("an hour", "an honest").
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")
# Letters whose names start with a vowel sound, for acronyms read letter by letter ("an MRI", "a CEO").
_VOWEL_SOUND_LETTERS = frozenset("AEFHILMNORSX")


class PromptSetError(MistError):
    """A prompt set that cannot be used (unknown name, unreadable file, missing columns); one-line message."""


@dataclass(frozen=True)
class PromptRecord:
    """One evaluation prompt: the text, the concept it shows, and an optional fixed seed."""

    prompt: str
    concept: str
    seed: int | None = None


@dataclass(frozen=True)
class EditPrompts:
    """The prompts a MIST edit encodes for one concept: the concept prompt and one prompt per cell."""

    concept: str
    attributes: tuple[str, ...]


def indefinite_article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for ``phrase``, by the sound of its first word.

    Handles acronyms read letter by letter (``an MRI technician``, ``a CEO``), silent h (``an hour``),
    vowels read as consonants (``a university``, ``a European``) and numbers (``an 8-year-old``,
    ``an 11-year-old``, ``a 3D animator``).
    """
    word = phrase.strip().split(" ", 1)[0] if phrase.strip() else ""
    if not word:
        return "a"
    letters = re.match(r"[A-Za-z]+", word)
    if word[0].isdigit():
        number = re.match(r"\d+", word).group()
        return "an" if number.startswith("8") or (number[:2] in ("11", "18") and len(number) % 3 == 2) else "a"
    if letters and len(letters.group()) > 1 and letters.group().isupper():
        return "an" if word[0] in _VOWEL_SOUND_LETTERS else "a"
    lower = word.lower()
    if lower.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if lower.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if lower[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """``phrase`` with its indefinite article: ``"an engineer"``, ``"a CEO"``."""
    return f"{indefinite_article(phrase)} {phrase}"


def strip_article(concept: str) -> str:
    """``"a doctor"`` → ``"doctor"`` (a leading a/an/the is removed; nothing else changes)."""
    return _ARTICLE.sub("", concept.strip(), count=1)


def fill_template(template: str, concept: str) -> str:
    """Fill ``{a}`` and ``{concept}`` of ``template`` (a leading article of ``concept`` is not doubled)."""
    concept = strip_article(concept) if "{a}" in template else concept.strip()
    try:
        return template.format(a=indefinite_article(concept), concept=concept)
    except (KeyError, IndexError, ValueError):
        raise PromptSetError(f"bad template {template!r}: only {{a}} and {{concept}} may be used") from None


def concept_prompt(concept: str, template: str = DEFAULT_EDIT_TEMPLATE) -> str:
    """The prompt whose keys a MIST edit moves: ``concept_prompt("doctor") == "a photo of a doctor"``."""
    return fill_template(template, concept)


def edit_prompts(concept: str, spec: AttributeSpec, template: str = DEFAULT_EDIT_TEMPLATE) -> EditPrompts:
    """The concept prompt and each cell's attribute prompt (the concept replaced by the cell phrase).

    ``edit_prompts("doctor", spec)`` → concept ``"a photo of a doctor"``, attributes
    ``("a photo of a young Asian woman", …)`` in cell order.
    """
    return EditPrompts(
        concept=concept_prompt(concept, template),
        attributes=tuple(fill_template(template, phrase) for phrase in spec.phrases),
    )


def preservation_prompts(
    edited: Iterable[str],
    mode: str = "default",
    run_concepts: Iterable[str] = (),
    template: str = DEFAULT_EDIT_TEMPLATE,
) -> list[str]:
    """Prompts whose keys an edit must keep: the empty prompt, then unedited concepts (``mode="default"``).

    ``default``: ``""`` plus the prompt (same ``template``) of every concept of ``run_concepts`` and of
    :data:`PROFESSIONS` that is not in ``edited`` (case-insensitive, articles ignored), in that order without
    repeats; ``paper``: ``[""]`` as in the official MIST code; ``none``: ``[]``.
    """
    if mode not in PRESERVE_MODES:
        raise PromptSetError(f"unknown preserve mode {mode!r} (choose from {', '.join(PRESERVE_MODES)})")
    if mode == "none":
        return []
    prompts = [""]
    if mode == "paper":
        return prompts
    skip = {strip_article(concept).lower() for concept in edited}
    for concept in [*run_concepts, *PROFESSIONS]:
        key = strip_article(concept).lower()
        if key not in skip:
            skip.add(key)
            prompts.append(concept_prompt(concept, template))
    return prompts


def builtin_prompt_set(name: str, concepts: Sequence[str] = PROFESSIONS) -> list[PromptRecord]:
    """A built-in prompt set (no fixed seeds).

    ``professions``: every concept × :data:`EVALUATION_TEMPLATES`; ``professions-validation``: one
    ``"a photo of {a} {concept}"`` per concept; ``non-person``: :data:`NON_PERSON_PROMPTS` (concept
    ``"non-person"``).
    """
    if name == "professions":
        return [PromptRecord(fill_template(t, c), c) for c in concepts for t in EVALUATION_TEMPLATES]
    if name == "professions-validation":
        return [PromptRecord(fill_template(EVALUATION_TEMPLATES[0], c), c) for c in concepts]
    if name == "non-person":
        return [PromptRecord(prompt, "non-person") for prompt in NON_PERSON_PROMPTS]
    raise PromptSetError(f"unknown prompt set {name!r} (built-in: {', '.join(BUILTIN_PROMPT_SETS)})")


def load_prompt_set(path: Path) -> list[PromptRecord]:
    """Read a prompt set from CSV or YAML with columns ``prompt``, ``concept`` and optional ``seed``.

    The official MIST file's column names are accepted too (``profession`` for ``concept``,
    ``evaluation_seed`` for ``seed``). YAML: a list of mappings, or a mapping with a ``prompts`` list.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PromptSetError(f"cannot read prompts file {path}: {error.strerror or error}") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows: list = list(reader)
        columns = list(reader.fieldnames or [])
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PromptSetError(f"prompts file {path} is not valid YAML: {one_line(error)}") from None
        rows = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise PromptSetError(f"prompts file {path}: expected a list of mappings (prompt, concept, seed)")
        columns = sorted({key for row in rows for key in row})
    else:
        raise PromptSetError(f"prompts file {path}: unsupported extension {suffix!r} (use .csv, .yaml, .yml)")
    return _records(path, rows, columns)


def resolve_prompt_set(name_or_path: str) -> list[PromptRecord]:
    """A built-in set by name, else a CSV/YAML file; an unknown name that is no file is an error."""
    if name_or_path in BUILTIN_PROMPT_SETS:
        return builtin_prompt_set(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return load_prompt_set(path)
    raise PromptSetError(
        f"unknown prompt set {name_or_path!r}: not a built-in set ({', '.join(BUILTIN_PROMPT_SETS)}) nor a file"
    )


def _records(path: Path, rows: list[dict], columns: list[str]) -> list[PromptRecord]:
    """Rows → records, with column aliases and one-line errors naming the file and row."""
    concept_key = "concept" if "concept" in columns else "profession"
    seed_key = "seed" if "seed" in columns else "evaluation_seed"
    missing = [name for name, key in (("prompt", "prompt"), ("concept", concept_key)) if key not in columns]
    if missing:
        raise PromptSetError(f"prompts file {path}: missing column(s) {', '.join(missing)}")
    if not rows:
        raise PromptSetError(f"prompts file {path} has no prompts")
    records = []
    for number, row in enumerate(rows, start=1):
        prompt, concept, seed = row.get("prompt"), row.get(concept_key), row.get(seed_key)
        if prompt is None or concept is None or not str(concept).strip():
            raise PromptSetError(f"prompts file {path}, row {number}: empty prompt or concept")
        if seed is not None and str(seed).strip() != "":
            try:
                seed = int(str(seed).strip())
            except ValueError:
                raise PromptSetError(f"prompts file {path}, row {number}: seed {seed!r} is not an integer") from None
            if seed < 0:
                raise PromptSetError(f"prompts file {path}, row {number}: seed must be ≥ 0")
        else:
            seed = None
        records.append(PromptRecord(str(prompt), str(concept).strip(), seed))
    return records
