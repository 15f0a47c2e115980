"""Random-weight SD3 and FLUX.1 pipelines built from configs (shaped like diffusers' own tiny test pipelines).

- ``sd3``: ``StableDiffusion3Pipeline`` — CLIP-L (16-d) and CLIP-G (24-d) ``CLIPTextModelWithProjection`` with the
  real CLIP tokenizer (the second pads with ``"!"``), a T5 encoder (48-d) whose width exceeds the CLIP states'
  40, an ``SD3Transformer2DModel`` with ``joint_attention_dim`` 48 and ``pooled_projection_dim`` 40.
- ``flux``: ``FluxPipeline`` — CLIP-L ``CLIPTextModel`` (32-d), a T5 encoder (32-d), a ``FluxTransformer2DModel``.

The T5 tokenizer is a small Unigram vocabulary (whole words for common prompt words, single characters for the
rest) wrapped in transformers' ``T5Tokenizer``, so it has T5's ``</s>`` end token and ``<pad>`` padding and
saves/loads like a real one without the hub.
"""

from __future__ import annotations

import string
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from mist_debias.core.clip_vocab import END_TOKEN, clip_tokenizer

TransformerFamily = Literal["sd3", "flux"]
TRANSFORMER_FAMILIES: tuple[TransformerFamily, ...] = ("sd3", "flux")
T5_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "photo",
    "portrait",
    "picture",
    "person",
    "people",
    "man",
    "woman",
    "men",
    "women",
    "young",
    "old",
    "asian",
    "black",
    "white",
    "doctor",
    "nurse",
    "ceo",
    "teacher",
    "engineer",
    "firefighter",
    "lawyer",
    "chef",
    "in",
    "on",
    "with",
    "and",
    "at",
)


def t5_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A small T5 tokenizer: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, words and single characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -5.0) for word in T5_WORDS]
    pieces += [(char, -10.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_config(hidden: int, pad_token_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )


def _t5(d_model: int, vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int) -> AutoencoderKL:
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def build_transformer_pipeline(family: TransformerFamily = "sd3", seed: int = 0) -> DiffusionPipeline:
    """A random-weight SD3 or FLUX pipeline (deterministic in ``seed``) with offline tokenizers."""
    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    if family == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=48,
            pooled_projection_dim=40,
            out_channels=4,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=_vae(4),
            text_encoder=CLIPTextModelWithProjection(_clip_config(16, 49407)),
            tokenizer=clip_tokenizer(END_TOKEN),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(24, 0)),
            tokenizer_2=clip_tokenizer("!"),
            text_encoder_3=_t5(48, len(t5_tok)),
            tokenizer_3=t5_tok,
        )
    if family == "flux":
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        )
        return FluxPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=_vae(1),
            text_encoder=CLIPTextModel(_clip_config(32, 49407)),
            tokenizer=clip_tokenizer(END_TOKEN),
            text_encoder_2=_t5(32, len(t5_tok)),
            tokenizer_2=t5_tok,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(TRANSFORMER_FAMILIES)}")
