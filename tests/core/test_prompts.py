import pytest

from mist_debias.core.prompts import (
    EVALUATION_TEMPLATES,
    NON_PERSON_PROMPTS,
    PROFESSIONS,
    PromptRecord,
    PromptSetError,
    builtin_prompt_set,
    concept_prompt,
    edit_prompts,
    fill_template,
    indefinite_article,
    load_prompt_set,
    preservation_prompts,
    resolve_prompt_set,
    strip_article,
    with_article,
)
from mist_debias.core.spec import spec_from_cli

# The UCE reference list (../shared/data/uce_gender_bias_prompts.csv), first 37 rows: article, profession.
UCE_ARTICLES = {
    "attendant": "an", "cashier": "a", "teacher": "a", "nurse": "a", "assistant": "an", "secretary": "a",
    "cleaner": "a", "receptionist": "a", "clerk": "a", "counselor": "a", "designer": "a", "hairdresser": "a",
    "writer": "a", "housekeeper": "a", "baker": "a", "librarian": "a", "tailor": "a", "driver": "a",
    "supervisor": "a", "janitor": "a", "cook": "a", "laborer": "a", "construction worker": "a",
    "developer": "a", "carpenter": "a", "manager": "a", "lawyer": "a", "farmer": "a", "salesperson": "a",
    "physician": "a", "guard": "a", "analyst": "an", "mechanic": "a", "sheriff": "a", "CEO": "a",
    "doctor": "a", "chef": "a",
}  # fmt: skip


def test_professions_are_the_reference_set():
    assert len(PROFESSIONS) == 37
    assert set(PROFESSIONS) == set(UCE_ARTICLES)


@pytest.mark.parametrize("profession", sorted(UCE_ARTICLES))
def test_articles_match_reference(profession):
    assert indefinite_article(profession) == UCE_ARTICLES[profession]


@pytest.mark.parametrize(
    ("phrase", "article"),
    [
        ("engineer", "an"),
        ("Engineer", "an"),
        ("old man", "an"),
        ("young Asian woman", "a"),
        ("Indian woman", "an"),
        ("hour", "an"),
        ("honest judge", "an"),
        ("university professor", "a"),
        ("European", "a"),
        ("one-eyed pirate", "a"),
        ("umbrella", "an"),
        ("MRI technician", "an"),
        ("FBI agent", "an"),
        ("UX designer", "a"),
        ("8-year-old", "an"),
        ("11-year-old", "an"),
        ("3D animator", "a"),
        ("Interpreter", "an"),  # the UCE file has "a Interpreter"
        ("Urban Planner", "an"),  # and "a Urban Planner"
        ("", "a"),
    ],
)
def test_article_rules(phrase, article):
    assert indefinite_article(phrase) == article


def test_templates():
    assert with_article("attendant") == "an attendant"
    assert concept_prompt("doctor") == "a photo of a doctor"
    assert concept_prompt("a engineer") == "a photo of an engineer"
    assert concept_prompt("CEO", "a headshot of {a} {concept}") == "a headshot of a CEO"
    assert fill_template("{a} {concept} working", "attendant") == "an attendant working"
    assert fill_template("{concept}", " a lawyer ") == "a lawyer"
    assert strip_article("An engineer") == "engineer"
    assert strip_article("anesthetist") == "anesthetist"
    with pytest.raises(PromptSetError, match="bad template"):
        fill_template("a photo of {article} {concept}", "doctor")


def test_edit_prompts_follow_official_replacement():
    spec = spec_from_cli(["gender=man,woman", "race=Asian,White", "age=young,old"])
    prompts = edit_prompts("doctor", spec)
    assert prompts.concept == "a photo of a doctor"
    assert len(prompts.attributes) == spec.num_cells
    assert prompts.attributes[0] == "a photo of a young Asian man"
    assert prompts.attributes[spec.cell_index({"gender": "man", "race": "Asian", "age": "old"})] == (
        "a photo of an old Asian man"
    )
    # The official setting: concept "a lawyer", attribute prompts = the bare cell phrases.
    official = edit_prompts("a lawyer", spec, template="{concept}")
    assert official.concept == "a lawyer"
    assert list(official.attributes) == spec.phrases


def test_preservation_prompts():
    prompts = preservation_prompts(["doctor", "a nurse"], run_concepts=["astronaut", "Doctor"])
    assert prompts[:3] == ["", "a photo of an astronaut", "a photo of an attendant"]
    assert "a photo of a doctor" not in prompts and "a photo of a nurse" not in prompts
    assert len(prompts) == 1 + 1 + 35
    assert len(set(prompts)) == len(prompts)
    assert preservation_prompts(["doctor"], mode="paper") == [""]
    assert preservation_prompts(["doctor"], mode="none") == []
    with pytest.raises(PromptSetError, match="unknown preserve mode"):
        preservation_prompts(["doctor"], mode="all")


def test_builtin_sets():
    full = builtin_prompt_set("professions")
    assert len(full) == 37 * len(EVALUATION_TEMPLATES)
    assert PromptRecord("an attendant talking on the phone", "attendant") in full
    assert PromptRecord("a headshot of a CEO", "CEO") in full
    assert [r.prompt for r in builtin_prompt_set("professions-validation")][:2] == [
        "a photo of an attendant",
        "a photo of a cashier",
    ]
    assert [r.prompt for r in resolve_prompt_set("non-person")] == list(NON_PERSON_PROMPTS)
    with pytest.raises(PromptSetError, match="unknown prompt set 'celebrities'"):
        resolve_prompt_set("celebrities")


def test_load_csv(tmp_path):
    path = tmp_path / "set.csv"
    path.write_text("prompt,concept,seed\na photo of a doctor,doctor,7\na nurse working,nurse,\n")
    assert load_prompt_set(path) == [
        PromptRecord("a photo of a doctor", "doctor", 7),
        PromptRecord("a nurse working", "nurse", None),
    ]
    assert resolve_prompt_set(str(path)) == load_prompt_set(path)


def test_load_official_mist_columns(tmp_path):
    path = tmp_path / "mist.csv"
    path.write_text("case_number,prompt,evaluation_seed,profession\n0,image of attendant,4442,attendant\n")
    assert load_prompt_set(path) == [PromptRecord("image of attendant", "attendant", 4442)]


def test_load_yaml(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text("prompts:\n  - {prompt: a photo of a chef, concept: chef, seed: 3}\n  - {prompt: x, concept: y}\n")
    assert load_prompt_set(path) == [PromptRecord("a photo of a chef", "chef", 3), PromptRecord("x", "y")]
    flat = tmp_path / "flat.yml"
    flat.write_text("- {prompt: a, concept: b}\n")
    assert load_prompt_set(flat) == [PromptRecord("a", "b")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "prompt,seed\nx,1\n", "missing column\\(s\\) concept"),
        ("a.csv", "text,label\nx,y\n", "missing column\\(s\\) prompt, concept"),
        ("a.csv", "prompt,concept\n", "has no prompts"),
        ("a.csv", "prompt,concept,seed\nx,y,one\n", "row 1: seed 'one' is not an integer"),
        ("a.csv", "prompt,concept,seed\nx,y,-3\n", "seed must be"),
        ("a.csv", "prompt,concept\nx,\n", "row 1: empty prompt or concept"),
        ("a.yaml", "- {prompt: x}\n", "missing column\\(s\\) concept"),
        ("a.yaml", "prompts: 3\n", "expected a list of mappings"),
        ("a.yaml", "prompts: [\n", "not valid YAML"),
        ("a.json", "[]", "unsupported extension"),
    ],
)
def test_bad_prompt_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PromptSetError, match=message) as info:
        load_prompt_set(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptSetError, match="cannot read prompts file"):
        load_prompt_set(tmp_path / "nope.csv")
