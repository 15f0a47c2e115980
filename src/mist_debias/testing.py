"""Random-weight Stable Diffusion pipelines built from configs, for tests and benchmarks.

Three families with the real CLIP tokenizer (derived offline, see :mod:`mist_debias.core.clip_vocab`):

- ``sd1``: SD1.x layout — one CLIP text encoder, last hidden state, padding with the EOS id.
- ``sd2``: SD2.x layout — linear projections in the transformers, padding with ``"!"`` (id 0).
- ``sdxl``: SDXL layout — two text encoders (penultimate states concatenated), several transformer blocks per
  attention, ``text_time`` added conditioning; the second tokenizer pads with ``"!"``.

``size="tiny"`` gives models that build in a fraction of a second; ``size="sd14"`` gives SD1.4's real UNet and
text-encoder shapes (block_out_channels 320/640/1280/1280, 768-d text, 12 layers) for benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from mist_debias.core.clip_vocab import END_TOKEN, clip_tokenizer, write_clip_tokenizer
from mist_debias.measure.classifiers.clip import CLIPImageProcessor

Family = Literal["sd1", "sd2", "sdxl"]
FAMILIES: tuple[Family, ...] = ("sd1", "sd2", "sdxl")
VOCAB_SIZE = 49408


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _text_config(hidden: int, layers: int, heads: int, pad_token_id: int, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def _sd1_unet(size: str) -> UNet2DConditionModel:
    if size == "sd14":
        return UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 32, 64, 64),
        norm_num_groups=16,
        cross_attention_dim=32,
        attention_head_dim=4,
    )


def build_pipeline(family: Family = "sd1", size: Literal["tiny", "sd14"] = "tiny", seed: int = 0) -> DiffusionPipeline:
    """A random-weight pipeline of ``family`` (deterministic in ``seed``), with the real CLIP tokenizer(s)."""
    if size == "sd14" and family != "sd1":
        raise ValueError("size='sd14' exists for the sd1 family only")
    torch.manual_seed(seed)
    scheduler = _scheduler()
    if family == "sd1":
        tokenizer = clip_tokenizer(END_TOKEN)
        hidden, layers, heads = (768, 12, 12) if size == "sd14" else (32, 2, 4)
        text_encoder = CLIPTextModel(_text_config(hidden, layers, heads, 49407, hidden))
        unet = _sd1_unet(size)
        vae = AutoencoderKL() if size == "sd14" else _tiny_vae()
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    bang_tokenizer = clip_tokenizer("!")
    if family == "sd2":
        text_encoder = CLIPTextModel(_text_config(32, 2, 4, 0, 32))
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(32, 32, 64, 64),
            norm_num_groups=16,
            cross_attention_dim=32,
            attention_head_dim=(2, 2, 4, 4),
            use_linear_projection=True,
        )
        return StableDiffusionPipeline(
            vae=_tiny_vae(),
            text_encoder=text_encoder,
            tokenizer=bang_tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if family == "sdxl":
        text_encoder = CLIPTextModel(_text_config(32, 2, 4, 49407, 32))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, 2, 4, 0, 32))
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
            norm_num_groups=16,
        )
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(END_TOKEN),
            tokenizer_2=bang_tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def save_pipeline(pipe: DiffusionPipeline, folder: Path) -> Path:
    """Save ``pipe`` as a diffusers folder (safetensors) and return the folder."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_clip(seed: int = 0, image_size: int = 32) -> CLIPModel:
    """A random-weight CLIP small enough for CPU tests (real vocabulary, ``image_size``-pixel images)."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=_text_config(32, 2, 4, 49407, 16).to_dict(),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def save_clip(model: CLIPModel, folder: Path) -> Path:
    """Save ``model`` as a CLIP folder with the real tokenizer and a matching image processor."""
    model.save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        str(folder)
    )
    return folder
