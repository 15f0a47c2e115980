import json

import pytest

from mist_debias.core.errors import MistError
from mist_debias.core.prompts import PROFESSIONS
from mist_debias.loop.config import (
    AttributesConfig,
    ConceptConfig,
    ConfigError,
    RunConfig,
    load_config,
    save_config,
)

YAML = """
model: CompVis/stable-diffusion-v1-4
seed: 3
tolerance: 0.04
budget: 20000
attributes:
  axes: {gender: [man, woman], race: [White, Black, Asian, Indian], age: [young, old]}
  target: uniform
concepts:
  - doctor
  - name: nurse
    attributes: {cells: [man, woman], target: [0.3, 0.7]}
  - name: CEO
    prompt: a headshot of a CEO
    attributes:
      axes: ["gender=man,woman", "age=young,old"]
      target: {gender: [0.5, 0.5], age: ["1/4", 0.75]}
      phrases: {"woman,old": elderly woman}
controller: {name: official, step: 0.1, images_per_iteration: 20}
classifier: {drive: /models/clip, evaluate: openai/clip-vit-large-patch14, mode: per-axis}
generation: {steps: 25, guidance: 7.0, negative_prompt: blurry, height: 512, width: 512, batch_size: 4}
edit: {method: mist, keys: eos+pad, lam: 0.5, edit_scale: 1.0, preserve_scale: 0.2, preserve: paper}
"""

TOML = """
model = "CompVis/stable-diffusion-v1-4"
seed = 3
tolerance = 0.04
budget = 20000

[attributes]
target = "uniform"
[attributes.axes]
gender = ["man", "woman"]
race = ["White", "Black", "Asian", "Indian"]
age = ["young", "old"]

[[concepts]]
name = "doctor"

[[concepts]]
name = "nurse"
attributes = { cells = ["man", "woman"], target = [0.3, 0.7] }

[[concepts]]
name = "CEO"
prompt = "a headshot of a CEO"
[concepts.attributes]
axes = ["gender=man,woman", "age=young,old"]
target = { gender = [0.5, 0.5], age = ["1/4", 0.75] }
phrases = { "woman,old" = "elderly woman" }

[controller]
name = "official"
step = 0.1
images_per_iteration = 20

[classifier]
drive = "/models/clip"
evaluate = "openai/clip-vit-large-patch14"
mode = "per-axis"

[generation]
steps = 25
guidance = 7.0
negative_prompt = "blurry"
height = 512
width = 512
batch_size = 4

[edit]
method = "mist"
keys = "eos+pad"
lam = 0.5
edit_scale = 1.0
preserve_scale = 0.2
preserve = "paper"
"""


@pytest.fixture
def yaml_config(tmp_path) -> RunConfig:
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    return load_config(path)


def test_yaml_fields(yaml_config):
    config = yaml_config
    assert config.model == "CompVis/stable-diffusion-v1-4"
    assert (config.seed, config.tolerance, config.budget) == (3, 0.04, 20000)
    assert [c.name for c in config.concepts] == ["doctor", "nurse", "CEO"]
    assert config.controller.name == "official"
    assert config.controller.options == {"step": 0.1, "images_per_iteration": 20}
    assert config.classifier.drive == "/models/clip" and config.classifier.mode == "per-axis"
    assert config.generation.steps == 25 and config.generation.negative_prompt == "blurry"
    assert config.generation.guidance == 7.0 and isinstance(config.generation.guidance, float)
    assert config.edit.keys == "eos+pad" and config.edit.preserve == "paper"


def test_per_concept_specs(yaml_config):
    doctor, nurse, ceo = (yaml_config.spec(c) for c in yaml_config.concepts)
    assert doctor.num_cells == 16 and doctor.target == tuple([1 / 16] * 16)
    assert nurse.phrases == ["man", "woman"] and nurse.target == (0.3, 0.7)
    assert ceo.phrases == ["young man", "old man", "young woman", "elderly woman"]
    assert ceo.target == pytest.approx((0.125, 0.375, 0.125, 0.375))


def test_toml_equals_yaml(tmp_path, yaml_config):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    assert load_config(path) == yaml_config


def test_round_trip_json(tmp_path, yaml_config):
    for config in (yaml_config, RunConfig()):
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path = tmp_path / "run" / "config.json"
    save_config(yaml_config, path)
    assert load_config(path) == yaml_config
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_defaults():
    config = RunConfig()
    assert config.model is None and config.concepts == ()
    assert config.tolerance == 0.05 and config.budget is None and config.seed == 0
    assert config.controller.name == "panel"
    assert config.edit.hyperparameters().lam == 0.5
    assert config.edit.resolved_keys == "eos"
    time = RunConfig.from_dict({"edit": {"method": "time"}})
    assert time.edit.hyperparameters().lam == 0.1 and time.edit.resolved_keys == "all"
    generation = RunConfig().generation.generation_config()
    assert (generation.steps, generation.guidance, generation.batch_size, generation.eta) == (20, 7.5, 16, 0.0)
    assert RunConfig.from_dict({"generation": {"eta": 0.5}}).generation.generation_config().eta == 0.5


def test_edit_prompts_and_preserve(yaml_config):
    prompts = yaml_config.concept_prompts()
    assert prompts[0].prompt == "a photo of a doctor"
    assert prompts[0].attributes[0] == "a photo of a young White man"
    assert prompts[1].attributes == ("a photo of a man", "a photo of a woman")
    assert prompts[2].prompt == "a headshot of a CEO"
    assert yaml_config.preserve_prompts() == [""]
    default = yaml_config.with_overrides({"edit.preserve": "default", "edit.preserve_prompts": ["a red car"]})
    preserved = default.preserve_prompts()
    assert preserved[0] == "" and preserved[-1] == "a red car"
    assert "a photo of a doctor" not in preserved and "a photo of a teacher" in preserved
    assert len(preserved) == 1 + (len(PROFESSIONS) - 3) + 1


def test_cli_overrides(yaml_config):
    attributes = AttributesConfig.from_cli(axes=["gender=man,woman"], targets=["0.4,0.6"])
    merged = yaml_config.with_overrides(
        {
            "tolerance": 0.02,
            "budget": None,
            "classifier.drive": "/other/clip",
            "generation.steps": 50,
            "controller.name": "adaptive",
            "concepts": ["nurse", "chef"],
            "attributes": attributes,
        }
    )
    assert merged.tolerance == 0.02 and merged.budget == 20000
    assert merged.classifier.drive == "/other/clip" and merged.generation.steps == 50
    assert [c.name for c in merged.concepts] == ["nurse", "chef"]
    assert merged.concepts[0] == yaml_config.concepts[1]  # keeps its own attributes
    assert merged.spec(merged.concepts[1]).target == (0.4, 0.6)
    assert yaml_config.differences(merged) == [
        "attributes.axes.age",  # the gender axis is the same in both
        "attributes.axes.race",
        "attributes.target",
        "classifier.drive",
        "concepts",
        "controller.name",
        "generation.steps",
        "tolerance",
    ]
    assert yaml_config.differences(merged, ignore=["attributes", "concepts", "controller", "generation"]) == [
        "classifier.drive",
        "tolerance",
    ]
    assert yaml_config.differences(yaml_config) == []


def test_check_complete():
    with pytest.raises(ConfigError, match="no concepts"):
        RunConfig().check_complete()
    config = RunConfig(concepts=(ConceptConfig("doctor"),))
    with pytest.raises(ConfigError, match="concept 'doctor' has no attributes"):
        config.check_complete()
    config.with_overrides({"attributes": AttributesConfig.from_cli(cells=["man", "woman"])}).check_complete()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tolerance": 0.5}, r"^tolerance: should be less than 0.5, got 0.5$"),
        ({"tolerance": 0}, r"^tolerance: should be greater than 0, got 0$"),
        ({"tolerance": "small"}, "^tolerance: should be a valid number, got 'small'$"),
        ({"budget": 0}, "^budget: should be greater than 0"),
        ({"budget": 10.5}, "^budget: should be a valid integer, got 10.5$"),
        ({"seed": -1}, "^seed: should be greater than or equal to 0"),
        ({"seed": True}, "^seed: should be a valid integer, got True$"),
        ({"seed": 2**32}, "^seed: should be less than or equal to 4294967295"),
        ({"concepts": [f"c{i}" for i in range(101)]}, "at most 100 concepts per run, got 101$"),
        ({"modle": "x"}, "^modle: unknown key$"),
        ({"generation": {"stepz": 3}}, "^generation.stepz: unknown key$"),
        ({"generation": {"steps": 0}}, "^generation: steps must be positive"),
        ({"generation": {"steps": "20"}}, "^generation.steps: should be a valid integer, got '20'$"),
        ({"generation": {"height": 500}}, "multiples of 8"),
        (
            {"generation": {"dtype": "float8"}},
            "^generation.dtype: should be 'auto', 'float32', 'float16' or 'bfloat16'",
        ),
        ({"generation": {"guidance": -1}}, "^generation: guidance must be a finite number ≥ 0"),
        ({"generation": {"eta": -0.5}}, "^generation: eta must be a finite number ≥ 0"),
        ({"controller": "pid"}, "^controller.name: should be 'panel', 'adaptive' or 'official', got 'pid'$"),
        ({"classifier": {"mode": "both"}}, "^classifier.mode: should be 'joint' or 'per-axis'"),
        ({"classifier": {"templates": ["a photo"]}}, "^classifier: template 'a photo' has no {phrase}$"),
        ({"classifier": {"templates": []}}, "^classifier.templates: Tuple should have at least 1 item"),
        ({"edit": {"keys": "first"}}, "^edit.keys: should be 'eos', 'eos\\+pad', 'last-word' or 'all'"),
        ({"edit": {"method": "sdedit"}}, "^edit.method: should be 'mist', 'uce' or 'time'"),
        ({"edit": {"preserve": "all"}}, "^edit.preserve: should be 'default', 'paper' or 'none'"),
        ({"edit": {"preserve_prompts": ["a", 1]}}, "^edit.preserve_prompts\\[1\\]: should be a valid string"),
        ({"edit": {"lam": 0}}, "^edit: lam must be > 0"),
        ({"edit": {"preserve_scale": -0.1}}, "^edit: preserve_scale must be ≥ 0"),
        ({"prompt_template": "a photo"}, "has no {concept}"),
        ({"concepts": "doctor"}, "^concepts: should be a list, got 'doctor'$"),
        ({"concepts": ["doctor", "Doctor"]}, "listed twice: doctor"),
        ({"concepts": [{"prompt": "x"}]}, "^concepts\\[0\\].name: missing$"),
        ({"concepts": [{"name": "x", "seed": 1}]}, "^concepts\\[0\\].seed: unknown key$"),
        ({"concepts": [" "]}, "^concepts\\[0\\]: a concept has an empty name$"),
        ({"attributes": {"axes": {"gender": ["man"]}}}, "^attributes: axis 'gender' needs at least 2 values"),
        ({"attributes": {"axes": ["gender"]}}, "^attributes: cannot parse axis 'gender'"),
        ({"attributes": {"axes": [{"name": "g", "valuez": ["a"]}]}}, "^attributes: unknown key 'valuez' in an axis$"),
        ({"attributes": {"cells": ["man", "man"]}}, "^attributes: duplicate cell"),
        ({"attributes": {"cells": ["a", "b"], "target": [0.5, 0.6]}}, "^attributes: target must sum to 1"),
        ({"attributes": {"cells": ["a", "b"], "target": [1.0]}}, "1 values for 2 cells"),
        ({"attributes": {"cells": ["a", "b"], "target": [True, 0]}}, "^attributes: True is not a probability$"),
        ({"attributes": {"cells": ["a", "b"], "target": {"g": [1, 0]}}}, "need axes"),
        ({"attributes": {"axes": {"g": ["a", "b"]}, "cells": ["a", "b"]}}, "exactly one of the two"),
        ({"attributes": {"cells": ["a", "b"], "phrasez": {}}}, "^attributes.phrasez: unknown key$"),
        (
            {"concepts": [{"name": "x", "attributes": {"axes": {"g": ["a", "b"]}, "target": {"h": [1, 0]}}}]},
            "^concepts\\[0\\].attributes: marginal for unknown axis 'h'",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_validation_messages(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        RunConfig.from_dict(data)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, MistError) and isinstance(info.value, ValueError)


def test_override_errors(yaml_config):
    with pytest.raises(ConfigError, match=r"unknown config key 'generation\.stepz'"):
        yaml_config.with_overrides({"generation.stepz": 3})
    with pytest.raises(ConfigError, match=r"tolerance: should be less than 0\.5"):
        yaml_config.with_overrides({"tolerance": 0.7})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("run.yaml", "tolerance: [1\n", "is not valid YAML"),
        ("run.toml", "tolerance = \n", "is not valid TOML"),
        ("run.json", "{", "is not valid JSON"),
        ("run.ini", "", "unsupported config extension"),
        ("run.yaml", "budget: -5\n", "^run.yaml: budget: should be greater than 0, got -5$"),
        ("run.yaml", "generation: {guidanse: 3}\n", "^run.yaml: generation.guidanse: unknown key$"),
    ],
)
def test_file_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert load_config(path) == RunConfig()


def test_each_choice_list_is_defined_once():
    from mist_debias.app import choices as cli_choices
    from mist_debias.core import choices
    from mist_debias.core.pipeline import DTYPES
    from mist_debias.loop.control import CONTROLLERS

    assert set(CONTROLLERS) == set(choices.CONTROLLER_NAMES) and tuple(DTYPES) == choices.DTYPE_NAMES
    for enum, values in (
        (cli_choices.MethodChoice, choices.METHODS),
        (cli_choices.KeysChoice, choices.KEY_SETS),
        (cli_choices.DtypeChoice, choices.DTYPE_NAMES),
        (cli_choices.ControllerChoice, choices.CONTROLLER_NAMES),
        (cli_choices.PreserveChoice, choices.PRESERVE_MODES),
        (cli_choices.ClassifyModeChoice, choices.CLASSIFY_MODES),
    ):
        assert tuple(member.value for member in enum) == values


def test_generation_settings_are_the_sampler_schema_plus_dtype_and_scheduler():
    import dataclasses

    from mist_debias.core.generate import GenerationConfig
    from mist_debias.loop.config import GenerationSettings

    sampler = [f.name for f in dataclasses.fields(GenerationConfig)]
    assert list(GenerationSettings.model_fields) == ["dtype", "scheduler", *sampler]
    settings = GenerationSettings(steps=3, eta=0.5, negative_prompt="blurry")
    assert settings.generation_config() == GenerationConfig(steps=3, eta=0.5, negative_prompt="blurry")


def test_the_default_controller_is_the_panel_controller_however_the_config_is_built():
    assert RunConfig().controller.name == "panel"
    assert RunConfig().with_overrides({"budget": 10}).controller.name == "panel"
    assert RunConfig.from_dict({"controller": {"step": 0.2}}).controller.name == "panel"
