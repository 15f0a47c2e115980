"""Model configurations of the world: autoencoder, tiny CLIP and SD1-layout UNet, in two sizes.

``WorldConfig()`` is the shipped model; ``WorldConfig.tiny()`` builds in a fraction of a second for
smoke tests. The UNet keeps Stable Diffusion v1's block layout (three cross-attention down blocks, a
cross-attention mid block, three cross-attention up blocks: 16 ``attn2`` modules) at a small width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel

from mist_debias.core.clip_vocab import END_TOKEN, START_TOKEN
from mist_debias.world.render import IMAGE_SIZE

VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
MAX_TOKENS = 77
SD1_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and schedules of the three training stages (steps, batch sizes, learning rates)."""

    norm_groups: int = 16
    vae_channels: tuple[int, ...] = (32, 32, 64)
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_patch: int = 8
    clip_steps: int = 900
    clip_batch: int = 128
    clip_lr: float = 1e-3
    clip_p_attribute: float = 0.6
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_heads: int = 4
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 1.5e-3
    unet_ema_decay: float = 0.998
    unet_snr_gamma: float | None = None
    unet_timestep_logit_normal: tuple[float, float] | None = (0.3, 1.0)
    unet_p_empty: float = 0.1
    unet_p_attribute: float = 0.5
    latent_dataset: int = 40000

    @classmethod
    def tiny(cls) -> WorldConfig:
        """A configuration that trains in seconds (for tests); the outputs are not meant to be good."""
        return cls(
            norm_groups=8,
            vae_channels=(16, 16, 16),
            vae_steps=3,
            vae_batch=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            vision_hidden=32,
            vision_layers=1,
            clip_steps=3,
            clip_batch=8,
            unet_channels=(16, 16, 16, 16),
            unet_heads=2,
            unet_steps=3,
            unet_batch=8,
            latent_dataset=32,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def build_vae(config: WorldConfig) -> AutoencoderKL:
    """AutoencoderKL with downscale factor 2^(len(channels)−1) = 4: 32×32×3 → 8×8×4."""
    blocks = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=config.norm_groups,
        sample_size=IMAGE_SIZE,
    )


def build_clip(config: WorldConfig) -> CLIPModel:
    """A tiny CLIP: causal text tower with the real CLIP vocabulary, ViT image tower on 32×32 images."""
    clip_config = CLIPConfig(
        text_config={
            "vocab_size": VOCAB_SIZE,
            "hidden_size": config.text_hidden,
            "intermediate_size": 4 * config.text_hidden,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": BOS_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID,
            "pad_token_id": EOS_TOKEN_ID,
            "hidden_act": "quick_gelu",
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "patch_size": config.vision_patch,
            "hidden_size": config.vision_hidden,
            "intermediate_size": 4 * config.vision_hidden,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.text_heads,
            "hidden_act": "quick_gelu",
        },
        projection_dim=config.text_hidden,
    )
    return CLIPModel(clip_config)


def build_unet(config: WorldConfig) -> UNet2DConditionModel:
    """SD1-layout UNet on 8×8×4 latents with cross_attention_dim = text hidden size (16 attn2 modules)."""
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=config.unet_channels,
        layers_per_block=2,
        attention_head_dim=config.unet_heads,
        cross_attention_dim=config.text_hidden,
        norm_num_groups=config.norm_groups,
    )


def build_train_scheduler() -> DDPMScheduler:
    """The SD1 noise schedule used for training (1000 steps, scaled-linear betas)."""
    return DDPMScheduler(num_train_timesteps=1000, **SD1_BETAS, clip_sample=False)


def build_sample_scheduler() -> DDIMScheduler:
    """The SD1 DDIM scheduler shipped with the pipeline."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        **SD1_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


SPECIAL_TOKENS = (START_TOKEN, END_TOKEN)
