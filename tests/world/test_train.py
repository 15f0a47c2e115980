import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from mist_debias.world import train as train_module
from mist_debias.world.bias import sample_attributes
from mist_debias.world.bundled import bundled_world_path
from mist_debias.world.captions import every_caption, sample_captions
from mist_debias.world.models import MAX_TOKENS, WorldConfig, build_train_scheduler
from mist_debias.world.train import (
    TrainingError,
    encode_prompts,
    multi_positive_infonce,
    text_encoder_from_clip,
    train_world,
    trained_token_ids,
)


def test_tiny_world_is_a_standard_pipeline_that_generates(tiny_world):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_world / "pipeline")
    assert pipeline.unet.dtype == torch.float32 and pipeline.text_encoder.dtype == torch.float32
    assert pipeline.safety_checker is None
    assert pipeline.tokenizer.pad_token == "<|endoftext|>"
    assert pipeline.scheduler.config.steps_offset == 1
    assert sum(name.endswith("attn2") for name, _ in pipeline.unet.named_modules()) == 16
    assert pipeline.vae.config.scaling_factor > 0
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        ["a photo of a doctor", ""],
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_tiny_clip_loads_in_float32(tiny_world):
    clip = CLIPModel.from_pretrained(tiny_world / "clip")
    assert clip.dtype == torch.float32
    stored = load_file(tiny_world / "clip" / "model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    summary = json.loads((tiny_world / "training.json").read_text())
    assert set(summary["seconds"]) == {"vae", "clip", "unet"}


def test_same_seed_same_weights_and_resume_is_a_no_op(tiny_world, tmp_path):
    again = tmp_path / "again"
    train_world(again, seed=0, config=WorldConfig.tiny())
    first = load_file(tiny_world / "stages" / "unet" / "diffusion_pytorch_model.safetensors")
    second = load_file(again / "stages" / "unet" / "diffusion_pytorch_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    # an interrupted run resumes from the last finished stage and ends with the same UNet
    (again / "stages" / "unet.json").unlink()
    train_world(again, seed=0, config=WorldConfig.tiny(), resume=True)
    third = load_file(again / "stages" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(first[key], third[key]) for key in first)


def test_unet_stage_resumes_mid_stage_bit_identically(tmp_path, monkeypatch):
    config = dataclasses.replace(WorldConfig.tiny(), unet_steps=5)
    whole = tmp_path / "whole"
    train_world(whole, seed=0, config=config, checkpoint_every=2)
    assert not (whole / "stages" / "unet-checkpoint").exists()

    report = train_module._report
    unet_steps_seen = []

    def interrupt_at_unet_step_four(progress, task, status, every=250):
        if progress.tasks[task].description == "unet":
            unet_steps_seen.append(task)
            if len(unet_steps_seen) == 4:
                raise KeyboardInterrupt
        report(progress, task, status, every)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(train_module, "_report", interrupt_at_unet_step_four)
    with pytest.raises(KeyboardInterrupt):
        train_world(interrupted, seed=0, config=config, checkpoint_every=2)
    monkeypatch.setattr(train_module, "_report", report)
    state = json.loads((interrupted / "stages" / "unet-checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    train_world(interrupted, seed=0, config=config, resume=True, checkpoint_every=2)

    first = load_file(whole / "stages" / "unet" / "diffusion_pytorch_model.safetensors")
    second = load_file(interrupted / "stages" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)
    losses = [json.loads((folder / "stages" / "unet.json").read_text())["losses"] for folder in (whole, interrupted)]
    assert losses[0] == losses[1] and len(losses[0]) == 5


def test_output_folder_rules(tiny_world, tmp_path):
    with pytest.raises(TrainingError, match="not empty"):
        train_world(tiny_world, seed=0, config=WorldConfig.tiny())
    with pytest.raises(TrainingError, match="another seed"):
        train_world(tiny_world, seed=1, config=WorldConfig.tiny(), resume=True)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match="not a world training folder"):
        train_world(stray, seed=0, config=WorldConfig.tiny(), resume=True)
    assert sorted(p.name for p in stray.iterdir()) == ["notes.txt"]


def test_multi_positive_infonce_matches_its_equation():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 4, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(2, 4, generator=generator), dim=-1)
    positives = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(np.log(10.0))
    logits = 10.0 * (image @ text.T).numpy()
    rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
    image_loss = -np.mean([(rows[0, 0] + rows[0, 1]) / 2, rows[1, 0], rows[2, 1]])
    text_loss = -np.mean([(cols[0, 0] + cols[1, 0]) / 2, (cols[0, 1] + cols[2, 1]) / 2])
    expected = 0.5 * (image_loss + text_loss)
    actual = multi_positive_infonce(image, text, positives, scale).item()
    assert actual == pytest.approx(expected, rel=1e-5)


def test_every_sampled_caption_is_in_the_caption_list():
    rng = np.random.default_rng(3)
    listed = set(every_caption())
    sampled = sample_captions(sample_attributes(3000, rng), rng, p_empty=0.1, p_attribute=0.6)
    assert set(sampled) <= listed and "" in listed
    assert len(set(sampled)) > 500


def test_untrained_token_rows_are_zero_and_captions_encode_as_before(tiny_world):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_world / "pipeline")
    keep = trained_token_ids(pipeline.tokenizer)
    rows = pipeline.text_encoder.get_input_embeddings().weight
    nonzero = torch.nonzero(rows.abs().sum(dim=1)).flatten().tolist()
    assert nonzero == keep and len(keep) < 40
    # the stage's CLIP before zeroing, stored in float16 as the pipeline is: same encoding of every caption
    stage = text_encoder_from_clip(CLIPModel.from_pretrained(tiny_world / "stages" / "clip")).half().float()
    assert torch.count_nonzero(stage.get_input_embeddings().weight.abs().sum(dim=1)) > 49000
    captions = every_caption()[::40]
    before = encode_prompts(pipeline.tokenizer, stage, captions)
    after = encode_prompts(pipeline.tokenizer, pipeline.text_encoder, captions)
    assert torch.equal(before, after)
    clip_rows = CLIPModel.from_pretrained(tiny_world / "clip").text_model.embeddings.token_embedding.weight
    assert torch.nonzero(clip_rows.abs().sum(dim=1)).flatten().tolist() == keep


def test_min_snr_weighting_matches_its_equation():
    scheduler = build_train_scheduler()
    generator = torch.Generator().manual_seed(0)
    prediction, noise = torch.randn(6, 4, 8, 8, generator=generator), torch.randn(6, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 10, 100, 300, 600, 999])
    plain = train_module._denoising_loss(prediction, noise, timesteps, scheduler, WorldConfig())
    assert torch.allclose(plain, ((prediction - noise) ** 2).mean())
    gamma = 5.0
    weighted = train_module._denoising_loss(
        prediction, noise, timesteps, scheduler, dataclasses.replace(WorldConfig(), unet_snr_gamma=gamma)
    )
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    expected = (
        torch.minimum(snr, torch.tensor(gamma)) / snr * ((prediction - noise) ** 2).double().mean((1, 2, 3))
    ).mean()
    assert torch.allclose(weighted.double(), expected, rtol=1e-5)
    # low-noise samples (SNR > γ) are down-weighted, high-noise ones keep weight 1
    assert snr[0] > gamma and snr[-1] < gamma and weighted < plain


def test_saved_pipeline_does_not_record_the_training_folders(tiny_world):
    for config_path in (tiny_world / "pipeline").glob("*/config.json"):
        assert "_name_or_path" not in json.loads(config_path.read_text()), config_path
    assert str(tiny_world) not in "".join(p.read_text() for p in (tiny_world / "pipeline").rglob("*.json"))


def test_timesteps_are_uniform_or_logit_normal_as_configured():
    uniform_config = dataclasses.replace(WorldConfig(), unet_timestep_logit_normal=None)
    uniform = train_module.sample_timesteps(5000, 1000, uniform_config, torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (5000,), generator=torch.Generator().manual_seed(3)))
    mean, std = 0.3, 1.0
    logit_config = dataclasses.replace(WorldConfig(), unet_timestep_logit_normal=(mean, std))
    drawn = train_module.sample_timesteps(5000, 1000, logit_config, torch.Generator().manual_seed(3))
    z = torch.randn(5000, generator=torch.Generator().manual_seed(3))
    expected = np.rint(999 / (1 + np.exp(-(mean + std * z.double().numpy()))))
    assert drawn.dtype == torch.long and np.array_equal(drawn.numpy(), expected)
    assert int(drawn.min()) >= 0 and int(drawn.max()) <= 999
    # more of the draws at mid noise than uniform sampling puts there
    middle = ((drawn >= 250) & (drawn < 750)).float().mean()
    assert middle > 0.6 > ((uniform >= 250) & (uniform < 750)).float().mean()


def test_caption_encodings_equal_encoding_each_batch_directly():
    pipeline_dir = bundled_world_path()
    tokenizer = CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
    encodings = train_module.CaptionEncodings(tokenizer, text_encoder)
    assert encodings.table.shape == (len(every_caption()), MAX_TOKENS, text_encoder.config.hidden_size)
    rng = np.random.default_rng(0)
    for _ in range(5):
        captions = sample_captions(sample_attributes(64, rng), rng, p_empty=0.1, p_attribute=0.5)
        assert torch.equal(encodings(captions), encode_prompts(tokenizer, text_encoder, captions))
