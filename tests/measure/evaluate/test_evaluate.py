"""Evaluation engine: plan and seeds, same-seed generation, the results table, metrics against their equations,
resume, and folder checks."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
from PIL import Image

from mist_debias.core.edit import Edit
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.prompts import PromptRecord, load_prompt_set
from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.measure.evaluate import (
    ORIGINAL,
    EvaluationError,
    EvaluationPlan,
    ItemResult,
    ModelVariant,
    WorkItem,
    check_folder,
    concept_matches,
    load_confusion,
    paired_cell_test,
    run_evaluation,
    variant_names,
)
from mist_debias.measure.metrics import cleam_correct, simultaneous_intervals

GENERATION = GenerationConfig(steps=2, guidance=7.5, height=32, width=32, batch_size=4)
SPEC = AttributeSpec.from_axes([Axis("gender", ("man", "woman")), Axis("age", ("young", "old"))])


def make_plan(prompts, n=3, seed=5, edit_path=None, **kwargs) -> EvaluationPlan:
    variants = [ModelVariant(ORIGINAL)]
    if edit_path is not None:
        variants.append(ModelVariant("doctor", str(edit_path), ("a photo of a doctor",)))
    return EvaluationPlan("model", variants, prompts, n, seed, SPEC, "stripes", GENERATION, **kwargs)


def test_concept_matching_uses_whole_words():
    assert concept_matches("doctor", "a photo of a doctor")
    assert concept_matches("a doctor", "A photo of a Doctor")
    assert concept_matches("construction worker", "a photo of a construction worker")
    assert not concept_matches("man", "a photo of a woman")
    assert not concept_matches("doctor", "a photo of a doctoral student")
    assert not concept_matches("non-person", "a photo of a person")


def test_variant_names_are_unique_and_never_original(tmp_path):
    paths = [tmp_path / "a" / "edit.safetensors", tmp_path / "b" / "edit.safetensors", tmp_path / "original.st"]
    assert variant_names(paths) == ["edit", "edit-2", "edited"]


def test_items_seeds_and_batches():
    prompts = [PromptRecord("a photo of a doctor", "doctor"), PromptRecord("a cat", "cat", seed=100)]
    plan = make_plan(prompts, n=3, seed=5, edit_path="x.safetensors")
    items = plan.items()
    assert len(items) == 2 * 2 * 3
    assert [i.index for i in items] == list(range(12))
    # image i of prompt p uses seed + p·n + i; a fixed seed s_p gives s_p + i; every model uses the same seeds
    assert [i.seed for i in items[:6]] == [5, 6, 7, 100, 101, 102]
    assert [i.seed for i in items[6:]] == [5, 6, 7, 100, 101, 102]
    assert {i.model for i in items[6:]} == {"doctor"}
    batches = plan.batches()
    assert [len(b) for b in batches] == [4, 2, 4, 2]
    assert all(len({i.model for i in b}) == 1 for b in batches)
    assert [item for batch in batches for item in batch] == items
    assert items[3].image == "images/original/p0001_s100.png"


def test_plan_rejects_bad_settings():
    prompts = [PromptRecord("a cat", "cat")]
    with pytest.raises(EvaluationError, match="--n must be positive"):
        make_plan(prompts, n=0)
    with pytest.raises(EvaluationError, match="empty"):
        make_plan([])
    with pytest.raises(EvaluationError, match="4×4"):
        make_plan(prompts, confusion=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(EvaluationError, match="sum to 1"):
        make_plan(prompts, confusion=np.full((4, 4), 0.3).tolist())


def binomial_two_sided(k: int, total: int) -> float:
    """Exact two-sided sign-test p-value by summing the Binomial(total, ½) pmf."""
    tail = sum(math.comb(total, i) for i in range(k + 1)) / 2**total
    return min(1.0, 2 * tail)


def test_paired_cell_test_is_the_exact_mcnemar_test():
    before = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 0])
    after = np.array([1, 1, 1, 1, 1, 0, 1, 0, 2, 2, 0, 0])
    # cell 0: into 0 = #{b≠0, a=0} = 2 (indices 7, 10); out of 0 = #{b=0, a≠0} = 5 (indices 0–4)
    # cell 1: into 1 = 5, out of 1 = 1 (index 7); cell 2: into 0, out of 1 (index 10)
    p, adjusted = paired_cell_test(before, after, 3)
    assert p == pytest.approx([binomial_two_sided(2, 7), binomial_two_sided(1, 6), binomial_two_sided(0, 1)])
    assert adjusted == pytest.approx(min(1.0, 3 * min(p)))
    p2, adjusted2 = paired_cell_test(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 2)
    assert p2 == [1.0, 1.0] and adjusted2 == 1.0
    # two cells: both cells' tests coincide, no Bonferroni factor
    p3, adjusted3 = paired_cell_test(np.zeros(8, int), np.ones(8, int), 2)
    assert p3[0] == p3[1] == pytest.approx(2 / 2**8) and adjusted3 == pytest.approx(2 / 2**8)


def test_confusion_files(tmp_path):
    spec = AttributeSpec.from_phrases(["man", "woman"])
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("man,woman\n0.9,0.1\n0.2,0.8\n")
    assert load_confusion(csv_path, spec).tolist() == [[0.9, 0.1], [0.2, 0.8]]
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps({"cells": ["woman", "man"], "matrix": [[1, 0], [0, 1]]}))
    with pytest.raises(EvaluationError, match="names cells"):
        load_confusion(json_path, spec)
    json_path.write_text(json.dumps([[0.5, 0.5], [0.5]]))
    with pytest.raises(EvaluationError):
        load_confusion(json_path, spec)


@pytest.fixture(scope="module")
def evaluated(tiny_model, doctor_edit, prompt_file, stripes, tmp_path_factory):
    """One finished evaluation (original + doctor edit, 4 prompts × 3 seeds) with a confusion matrix."""
    folder = tmp_path_factory.mktemp("evaluation") / "eval"
    confusion = np.full((4, 4), 0.05) + np.eye(4) * 0.8
    plan = make_plan(load_prompt_set(prompt_file), n=3, seed=11, edit_path=doctor_edit, confusion=confusion.tolist())
    pipe = load_pipeline(tiny_model, device="cpu")
    outcome = run_evaluation(plan, folder, pipe, {"doctor": Edit.load(doctor_edit)}, stripes())
    return plan, folder, outcome, pipe


def test_images_are_the_same_seeds_for_every_model(evaluated, doctor_edit):
    _, folder, outcome, pipe = evaluated
    rows = outcome.rows
    assert len(rows) == 2 * 4 * 3
    first = [r for r in rows if r["model"] == ORIGINAL][:3]
    direct = generate_images(pipe, [r["prompt"] for r in first], [r["seed"] for r in first], GENERATION)
    for row, image in zip(first, direct, strict=True):
        assert np.array_equal(np.asarray(Image.open(folder / row["image"])), np.asarray(image))
    # the same batch as the evaluation generated: CPU kernels may round differently at another batch size
    with Edit.load(doctor_edit).applied(pipe):
        edited = generate_images(pipe, [r["prompt"] for r in first], [r["seed"] for r in first], GENERATION)[0]
    assert np.array_equal(np.asarray(Image.open(folder / "images/doctor" / first[0]["image"].split("/")[-1])), edited)
    originals = {(r["prompt_index"], r["seed"]): r for r in rows if r["model"] == ORIGINAL}
    for row in rows:
        if row["model"] == ORIGINAL:
            assert row["pixel_change"] is None
            continue
        twin = originals[(row["prompt_index"], row["seed"])]
        a = np.asarray(Image.open(folder / twin["image"]), dtype=float)
        b = np.asarray(Image.open(folder / row["image"]), dtype=float)
        assert row["pixel_change"] == pytest.approx(np.abs(a - b).mean() / 255)
    assert any(r["pixel_change"] > 0 for r in rows if r["concept"] == "doctor" and r["model"] == "doctor")


def test_results_table_csv_matches_json(evaluated):
    _, folder, outcome, _ = evaluated
    with (folder / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(outcome.rows)
    for row, record in zip(table, outcome.rows, strict=True):
        assert row["model"] == record["model"] and row["concept"] == record["concept"]
        assert int(row["seed"]) == record["seed"] and row["predicted_cell"] == (record["predicted_cell"] or "")
        for phrase in SPEC.phrases:
            assert float(row[f"p[{phrase}]"]) == pytest.approx(record["probs"][phrase])
        assert record["predicted_cell"] == max(record["probs"], key=record["probs"].get)
    assert {r["edited"] for r in outcome.rows if r["concept"] == "doctor" and r["model"] == "doctor"} == {True}
    assert not any(r["edited"] for r in outcome.rows if r["concept"] != "doctor")


def test_metrics_follow_from_the_table(evaluated):
    plan, folder, outcome, _ = evaluated
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(outcome.metrics))
    assert len(metrics["distributions"]) == 3 * 2
    confusion = np.asarray(plan.confusion)
    for entry in metrics["distributions"]:
        rows = [r for r in outcome.rows if r["model"] == entry["model"] and r["concept"] == entry["concept"]]
        counts = np.array([sum(r["predicted_cell"] == c for r in rows) for c in SPEC.phrases])
        joint = entry["joint"]
        assert joint["counts"] == counts.tolist() and joint["n"] == len(rows)
        lower, upper = simultaneous_intervals(counts)
        assert joint["lower"] == pytest.approx(lower.tolist()) and joint["upper"] == pytest.approx(upper.tolist())
        r = counts / counts.sum()
        assert joint["deviation"] == pytest.approx(np.max(np.abs(r - 0.25)) / 0.75)
        men = counts[0] + counts[1]  # cells: young man, old man, young woman, old woman
        assert entry["marginals"]["gender"]["counts"] == [men, counts.sum() - men]
        young = counts[0] + counts[2]
        assert entry["marginals"]["age"]["counts"] == [young, counts.sum() - young]
        assert entry["cleam"]["ratios"] == pytest.approx(cleam_correct(r, confusion).tolist())
        assert entry["edited"] == (entry["model"] == "doctor" and entry["concept"] == "doctor")


def test_preservation_entries(evaluated):
    plan, _, outcome, _ = evaluated
    preservation = outcome.metrics["preservation"]
    assert [(e["model"], e["concept"], e["edited"]) for e in preservation] == [
        ("doctor", "doctor", True),
        ("doctor", "teacher", False),
        ("doctor", "non-person", False),
    ]
    for entry in preservation:
        rows = [r for r in outcome.rows if r["model"] == "doctor" and r["concept"] == entry["concept"]]
        changes = np.array([r["pixel_change"] for r in rows])
        assert entry["pixel_change_mean"] == pytest.approx(changes.mean())
        assert entry["fraction_changed"] == pytest.approx(np.mean(changes > plan.change_threshold))
        before = {(r["prompt_index"], r["seed"]): r["predicted_index"] for r in outcome.rows if r["model"] == ORIGINAL}
        flips = sum(before[(r["prompt_index"], r["seed"])] != r["predicted_index"] for r in rows)
        assert entry["label_flips"] == flips
        assert entry["moved"] == (entry["mcnemar_p_adjusted"] < plan.alpha)


def test_resume_regenerates_only_missing_batches_with_identical_images(evaluated, doctor_edit, stripes):
    plan, folder, outcome, pipe = evaluated
    victims = [folder / outcome.rows[1]["image"], folder / outcome.rows[-1]["image"]]
    saved = [np.asarray(Image.open(path)).copy() for path in victims]
    for path in victims:
        path.unlink()
    (folder / "metrics.json").unlink()
    assert check_folder(folder, plan, resume=True, force=False) is False
    again = run_evaluation(plan, folder, pipe, {"doctor": Edit.load(doctor_edit)}, stripes(), fresh=False)
    assert again.generated.images == 2
    assert again.generated.skipped == len(outcome.rows) - 2
    # the two batches holding the missing images are generated whole (4 images, 2 steps, 2 evaluations with CFG)
    assert again.generated.unet_evaluations == 2 * GENERATION.batch_size * GENERATION.steps * 2
    for path, pixels in zip(victims, saved, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), pixels)
    assert again.rows == outcome.rows


def test_folder_checks(evaluated, tmp_path):
    plan, folder, _, _ = evaluated
    with pytest.raises(EvaluationError, match="already exists"):
        check_folder(folder, plan, resume=False, force=False)
    other = dataclasses.replace(plan, n=plan.n + 1)
    with pytest.raises(EvaluationError, match=r"other settings \(n: 3 → 4\); --force replaces it"):
        check_folder(folder, other, resume=True, force=False)
    assert check_folder(folder, plan, resume=False, force=True) is True
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(EvaluationError, match="not an evaluation folder"):
        check_folder(stranger, plan, resume=False, force=True)
    with pytest.raises(EvaluationError, match="not an evaluation folder; refusing to use it"):
        check_folder(stranger, plan, resume=False, force=False)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]
    assert check_folder(tmp_path / "new", plan, resume=False, force=False) is True
    assert not (tmp_path / "new").exists()


def test_item_result_row_marks_invalid_images():
    item = WorkItem(0, ORIGINAL, "doctor", "a photo of a doctor", 0, 3)
    row = ItemResult(item, (0.0, 0.0, 0.0, 0.0), valid=False, label=-1).row(SPEC.phrases, edited=False)
    assert row["predicted_cell"] is None and row["valid"] is False and row["predicted_index"] is None


def test_clip_scores_against_their_definition(tiny_model, doctor_edit, tiny_clip, stripes, tmp_path):
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from mist_debias.measure.classifiers.clip import CLIPImageProcessor
    from mist_debias.measure.clip_score import CLIPScorer

    prompts = [PromptRecord("a photo of a doctor", "doctor"), PromptRecord("a photo of a chef", "chef")]
    plan = make_plan(prompts, n=2, edit_path=doctor_edit, clip_model=str(tiny_clip))
    pipe = load_pipeline(tiny_model, device="cpu")
    scorer = CLIPScorer.load(str(tiny_clip))
    # this random CLIP finds every image and prompt anti-aligned (cos < 0, score 0); flipping the image
    # projection makes every cosine positive so the scores below are 100·cos, not the clip at 0
    with torch.no_grad():
        scorer.clip.model.visual_projection.weight.neg_()
    outcome = run_evaluation(
        plan, tmp_path / "eval", pipe, {"doctor": Edit.load(doctor_edit)}, stripes(), scorer=scorer
    )
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    with torch.no_grad():
        model.visual_projection.weight.neg_()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    rows = outcome.rows
    with torch.no_grad():
        images = [Image.open(tmp_path / "eval" / r["image"]).convert("RGB") for r in rows]
        image_features = model.get_image_features(
            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]
        )
        tokens = tokenizer([r["prompt"] for r in rows], padding=True, return_tensors="pt")
        text_features = model.get_text_features(**tokens)
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    cosine = torch.nn.functional.cosine_similarity(image_features.double(), text_features.double()).numpy()
    expected = 100 * np.maximum(cosine, 0)
    assert np.all(cosine > 0)  # the clip at 0 is not what makes the comparison pass
    assert [r["clip_score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-3)
    for entry in outcome.metrics["distributions"]:
        scores = [r["clip_score"] for r in rows if r["model"] == entry["model"] and r["concept"] == entry["concept"]]
        assert entry["clip_score_mean"] == pytest.approx(np.mean(scores))
    chef = next(e for e in outcome.metrics["preservation"] if e["concept"] == "chef")
    by_key = {(r["model"], r["seed"]): r["clip_score"] for r in rows}
    changes = [by_key[("doctor", s)] - by_key[(ORIGINAL, s)] for s in (7, 8)]
    assert chef["clip_score_change_mean"] == pytest.approx(np.mean(changes))
    with torch.no_grad():
        scorer.clip.model.visual_projection.weight.neg_()
    assert scorer.score(images[:2], [r["prompt"] for r in rows[:2]]).tolist() == [0.0, 0.0]
