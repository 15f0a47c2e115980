"""Train the synthetic world from scratch on the CPU, the way Stable Diffusion was built.

Three stages, each checkpointed atomically under ``out_dir/stages/`` so that an interrupted run resumes at
the first unfinished stage with the same result:

1. **Autoencoder** (``AutoencoderKL``, 32×32×3 → 8×8×4) on fresh renders,
   loss ``‖D(z) − x‖² + β·KL(q(z|x) ‖ N(0, I))``, ``z ~ q(z|x)``. Its ``scaling_factor`` is set to
   1 / std of the latents, as in SD.
2. **Tiny CLIP** (``CLIPModel``) with a multi-positive InfoNCE over the *unique* captions ``U`` of each
   batch. With ``s_iu = τ · ⟨f(x_i), g(u)⟩`` (unit embeddings, learned temperature τ) and
   ``P_iu = 1`` when caption u fits image i (every attribute it names is the image's),

       L = ½ [ −Σ_i Σ_u π_iu log softmax_u(s_i·)  −  Σ_u Σ_i ρ_iu log softmax_i(s_·u) ],

   ``π_iu = P_iu / Σ_u P_iu``, ``ρ_iu = P_iu / Σ_i P_iu`` (means over rows/columns). Plain InfoNCE would
   treat the many duplicate and compatible captions of a batch as negatives.
3. **UNet** (SD1 layout) on the *frozen* text encoder's last hidden state of 77 tokens padded with
   ``<|endoftext|>`` (SD1's convention), with the ε-prediction loss
   ``‖ε − ε_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t, c)‖²`` and an exponential moving average of the weights. With
   ``unet_snr_gamma = γ`` each sample's loss is weighted by ``min(SNR_t, γ) / SNR_t``,
   ``SNR_t = ᾱ_t / (1 − ᾱ_t)`` (Min-SNR weighting for ε-prediction). Timesteps are uniform on
   ``{0, …, T−1}``, or with ``unet_timestep_logit_normal = (m, s)`` logit-normal,
   ``t = round((T − 1) · σ(m + s·z))``, ``z ~ N(0, 1)``: more of the steps at mid noise.

The result is a standard ``StableDiffusionPipeline`` folder (``out_dir/pipeline``) and the CLIP model with
its tokenizer (``out_dir/clip``, a zero-shot classifier of the world). Every random draw comes from
generators seeded by ``(seed, stage)``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from mist_debias.core.clip_vocab import END_TOKEN, write_clip_tokenizer
from mist_debias.world.bias import sample_attributes
from mist_debias.world.captions import caption_fits, every_caption, sample_captions
from mist_debias.world.checkpoint import STATE_FILE, TrainingLoop, load_checkpoint, save_checkpoint
from mist_debias.world.models import (
    MAX_TOKENS,
    WorldConfig,
    build_clip,
    build_sample_scheduler,
    build_train_scheduler,
    build_unet,
    build_vae,
)
from mist_debias.world.render import IMAGE_SIZE, Attributes, render_batch

STAGES: tuple[str, ...] = ("vae", "clip", "unet")
STORAGE_DTYPE = torch.float16


class TrainingError(RuntimeError):
    """The output folder cannot be used for this training run."""


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, 32, 32, 3) uint8 → (n, 3, 32, 32) float in [−1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _rng(seed: int, stage: str) -> np.random.Generator:
    return np.random.default_rng([seed, STAGES.index(stage)])


def _torch_generator(seed: int, stage: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + STAGES.index(stage))


@contextmanager
def atomic_dir(target: Path):
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _features(output) -> torch.Tensor:
    """Projected CLIP features from ``get_*_features`` (a tensor, or an output whose pooler holds them)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _report(progress: Progress, task, status: str, every: int = 250) -> None:
    """Advance the bar; without a terminal, also print a line every ``every`` steps."""
    progress.update(task, advance=1, status=status)
    done = progress.tasks[task].completed
    if not progress.console.is_terminal and (done % every == 0 or done == progress.tasks[task].total):
        progress.console.print(f"{progress.tasks[task].description} {done}/{progress.tasks[task].total} {status}")


def _progress() -> Progress:
    """A live bar on a terminal; elsewhere (logs) the bar is off and :func:`_report` prints lines."""
    console = Console()
    return Progress(
        TextColumn("[bold]{task.description:<6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not console.is_terminal,
    )


def train_vae(
    config: WorldConfig, seed: int, progress: Progress, device: str = "cpu"
) -> tuple[AutoencoderKL, list[float]]:
    """Stage 1: the autoencoder on fresh renders; sets ``scaling_factor`` = 1 / std(latents)."""
    rng, generator = _rng(seed, "vae"), _torch_generator(seed, "vae")
    torch.manual_seed(seed)
    vae = build_vae(config).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.vae_steps, config.vae_steps // 20 + 1)
    )
    task = progress.add_task("vae", total=config.vae_steps, status="")
    losses = []
    for _ in range(config.vae_steps):
        pixels = images_to_tensor(render_batch(sample_attributes(config.vae_batch, rng), rng)).to(device)
        posterior = vae.encode(pixels).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(device)
        latents = posterior.mean + posterior.std * eps
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, pixels) + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _report(progress, task, f"loss {np.mean(losses[-50:]):.5f}")
    vae.eval()
    with torch.no_grad():
        pixels = images_to_tensor(render_batch(sample_attributes(512, rng), rng)).to(device)
        std = vae.encode(pixels).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, losses


def multi_positive_infonce(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with several positives per row and column (see module docstring).

    ``image_embeds`` (n × e) and ``text_embeds`` (m × e) are unit vectors; ``positives`` (n × m) is 1 where
    caption u fits image i. Every row and column must have at least one positive.
    """
    logits = logit_scale.exp().clamp(max=100.0) * image_embeds @ text_embeds.T
    image_targets = positives / positives.sum(dim=1, keepdim=True)
    text_targets = positives / positives.sum(dim=0, keepdim=True)
    image_loss = -(image_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_loss = -(text_targets * logits.log_softmax(dim=0)).sum(dim=0).mean()
    return 0.5 * (image_loss + text_loss)


def train_clip(
    config: WorldConfig, seed: int, tokenizer: CLIPTokenizer, progress: Progress, device: str = "cpu"
) -> tuple[CLIPModel, list[float]]:
    """Stage 2: the tiny CLIP, contrastively, on renders and non-empty captions."""
    rng = _rng(seed, "clip")
    torch.manual_seed(seed + 1)
    clip = build_clip(config).to(device)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=config.clip_lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.clip_steps, config.clip_steps // 20 + 1)
    )
    task = progress.add_task("clip", total=config.clip_steps, status="")
    losses = []
    for _ in range(config.clip_steps):
        people = sample_attributes(config.clip_batch, rng)
        pixels = images_to_tensor(render_batch(people, rng)).to(device)
        captions = sample_captions(people, rng, p_empty=0.0, p_attribute=config.clip_p_attribute)
        unique = sorted(set(captions))
        positives = torch.tensor([[float(caption_fits(c, person)) for c in unique] for person in people])
        ids = tokenizer(unique, padding="longest", return_tensors="pt").input_ids.to(device)
        text_embeds = F.normalize(_features(clip.get_text_features(input_ids=ids)), dim=-1)
        image_embeds = F.normalize(_features(clip.get_image_features(pixel_values=pixels)), dim=-1)
        positives = positives.to(device)
        loss = multi_positive_infonce(image_embeds, text_embeds, positives, clip.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        _report(progress, task, f"loss {np.mean(losses[-50:]):.4f}")
    clip.eval()
    return clip, losses


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The CLIP text tower as a standalone ``CLIPTextModel`` (what the pipeline conditions on)."""
    text_config = CLIPTextConfig(**clip.config.text_config.to_dict())
    encoder = CLIPTextModel(text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


def trained_token_ids(tokenizer: CLIPTokenizer) -> list[int]:
    """The token ids that occur in some training caption (:func:`~mist_debias.world.captions.every_caption`)."""
    ids = {token for caption in every_caption() for token in tokenizer(caption).input_ids}
    return sorted(ids | {tokenizer.pad_token_id})


def zero_untrained_token_embeddings(embedding: torch.nn.Embedding, keep: list[int]) -> None:
    """Set every row of ``embedding`` outside ``keep`` to zero, in place.

    Rows of tokens that no caption contains never received a gradient: they hold initialisation noise that no
    world prompt reads. Zeroing them leaves the encoding of every training caption bit-identical and lets the
    shipped weight files (49,408 × hidden rows, of which a few dozen are trained) compress to a fraction.
    """
    mask = torch.ones(embedding.num_embeddings, dtype=torch.bool)
    mask[keep] = False
    with torch.no_grad():
        embedding.weight[mask] = 0.0


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """SD1 conditioning: last hidden state of 77 tokens padded with ``<|endoftext|>``, no attention mask."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0]


def encode_latent_dataset(
    vae: AutoencoderKL, people: list[Attributes], rng: np.random.Generator, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of the VAE for a render of each person."""
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(people), chunk):
            pixels = images_to_tensor(render_batch(people[start : start + chunk], rng)).to(vae.device)
            posterior = vae.encode(pixels).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


class CaptionEncodings:
    """The frozen text encoder's output for every possible training caption, encoded once.

    The captions are few (:func:`~mist_debias.world.captions.every_caption`), so the UNet stage looks its
    conditioning up instead of running the text encoder on every step; each caption is encoded on its own
    row, so a lookup equals encoding the batch directly (tested).
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, chunk: int = 256) -> None:
        captions = every_caption()
        self.index = {caption: row for row, caption in enumerate(captions)}
        self.table = torch.cat(
            [encode_prompts(tokenizer, text_encoder, captions[i : i + chunk]) for i in range(0, len(captions), chunk)]
        )

    def __call__(self, captions: list[str]) -> torch.Tensor:
        return self.table[[self.index[caption] for caption in captions]]


def _denoising_loss(
    prediction: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    config: WorldConfig,
) -> torch.Tensor:
    """Mean ‖ε − ε_θ‖², per sample weighted by ``min(SNR_t, γ) / SNR_t`` when ``config.unet_snr_gamma`` is set."""
    if config.unet_snr_gamma is None:
        return F.mse_loss(prediction, noise)
    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=config.unet_snr_gamma) / snr
    per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weights * per_sample).mean()


def sample_timesteps(
    batch: int, num_train_timesteps: int, config: WorldConfig, generator: torch.Generator
) -> torch.Tensor:
    """Training timesteps: uniform, or ``round((T − 1) · σ(m + s·z))`` with ``config.unet_timestep_logit_normal``."""
    if config.unet_timestep_logit_normal is None:
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    mean, std = config.unet_timestep_logit_normal
    logits = mean + std * torch.randn(batch, generator=generator)
    return (torch.sigmoid(logits) * (num_train_timesteps - 1)).round().long()


def train_unet(
    config: WorldConfig,
    seed: int,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    progress: Progress,
    device: str = "cpu",
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 500,
) -> tuple[UNet2DConditionModel, list[float]]:
    """Stage 3: the UNet with the ε-prediction loss on the frozen text encoder; returns the EMA weights.

    With ``checkpoint_dir``, the whole loop state is saved there every ``checkpoint_every`` steps and a
    checkpoint found there is continued from; the result is bit-identical to an uninterrupted run.
    """
    rng, generator = _rng(seed, "unet"), _torch_generator(seed, "unet")
    torch.manual_seed(seed + 2)
    people = sample_attributes(config.latent_dataset, rng)
    means, stds = encode_latent_dataset(vae, people, rng)
    scaling = vae.config.scaling_factor
    unet = build_unet(config).to(device)
    ema = EMAModel(unet.parameters(), decay=config.unet_ema_decay)
    noise_scheduler = build_train_scheduler()
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.unet_steps, config.unet_steps // 20 + 1)
    )
    loop = TrainingLoop(unet, ema, optimizer, schedule, rng, generator)
    encodings = CaptionEncodings(tokenizer, text_encoder)
    start, losses = 0, []
    if checkpoint_dir is not None and (checkpoint_dir / STATE_FILE).is_file():
        start, losses = load_checkpoint(checkpoint_dir, loop)
    task = progress.add_task("unet", total=config.unet_steps, completed=start, status="")
    for step in range(start, config.unet_steps):
        index = rng.integers(0, len(people), size=config.unet_batch)
        captions = sample_captions(
            [people[i] for i in index], rng, p_empty=config.unet_p_empty, p_attribute=config.unet_p_attribute
        )
        conditioning = encodings(captions)
        batch_index = torch.from_numpy(index).to(means.device)
        mean, std = means[batch_index], stds[batch_index]
        latents = scaling * (mean + std * torch.randn(mean.shape, generator=generator).to(device))
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = sample_timesteps(len(index), num_train_timesteps, config, generator).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        loss = _denoising_loss(unet(noisy, timesteps, conditioning).sample, noise, timesteps, noise_scheduler, config)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        losses.append(loss.item())
        _report(progress, task, f"loss {np.mean(losses[-100:]):.4f}")
        if checkpoint_dir is not None and (step + 1) % checkpoint_every == 0 and step + 1 < config.unet_steps:
            save_checkpoint(checkpoint_dir, loop, step + 1, losses)
    ema.copy_to(unet.parameters())
    return unet.eval(), losses


def training_manifest(config: WorldConfig, seed: int) -> dict:
    """Seed and configuration of a training run as stored (JSON types), in ``stages/`` and ``training.json``."""
    return {"seed": seed, "config": json.loads(json.dumps(config.to_dict()))}


def _check_out_dir(out_dir: Path, manifest: dict, force: bool, resume: bool) -> None:
    if force and resume:
        raise TrainingError("--force and --resume exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if force:
            shutil.rmtree(out_dir)
        elif not resume:
            raise TrainingError(f"{out_dir} is not empty: pass --resume to continue or --force to overwrite")
        else:
            previous = out_dir / "stages" / "manifest.json"
            if not previous.is_file():
                raise TrainingError(f"{out_dir} is not a world training folder (no stages/manifest.json)")
            if json.loads(previous.read_text(encoding="utf-8")) != manifest:
                raise TrainingError(f"{out_dir} was trained with another seed or configuration")


def save_half(module, folder: Path) -> None:
    """Save ``module`` with float16 weights but a config that loads it in float32.

    Halves the files (the 49,408-row token embedding dominates); ``from_pretrained`` without a dtype then
    still gives a float32 model (transformers reads ``dtype`` from the config, diffusers defaults to
    float32).
    """
    module.to(STORAGE_DTYPE).save_pretrained(folder)
    module.float()

    def to_float32(node):
        if isinstance(node, dict):
            return {
                key: "float32" if key in ("dtype", "torch_dtype") else to_float32(value) for key, value in node.items()
            }
        return node

    _rewrite_config(folder / "config.json", to_float32)


def _rewrite_config(config_path: Path, edit: Callable[[dict], dict]) -> None:
    """Apply ``edit`` to a saved JSON config, writing it back (sorted keys, indent 2) only if it changed."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    edited = edit(config)
    if edited != config:
        config_path.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _without_source_path(config: dict) -> dict:
    """The config without ``_name_or_path`` (the folder a component was loaded from)."""
    return {key: value for key, value in config.items() if key != "_name_or_path"}


def save_pipeline(
    target: Path,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
) -> None:
    """Write a ``StableDiffusionPipeline`` folder (text encoder and UNet stored in float16, loaded in float32)."""
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(target) as tmp:
        pipeline.save_pretrained(tmp)
        for name, module in (("text_encoder", text_encoder), ("unet", unet)):
            shutil.rmtree(tmp / name)
            save_half(module, tmp / name)
        for config_path in tmp.glob("*/config.json"):
            _rewrite_config(config_path, _without_source_path)


def clip_processor(tokenizer: CLIPTokenizer) -> CLIPProcessor:
    """The processor the world's CLIP was trained with: 32×32 RGB, ``x / 127.5 − 1`` (mean = std = ½)."""
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=Image.BILINEAR,
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_clip(target: Path, clip: CLIPModel, tokenizer_dir: Path) -> None:
    """Write the CLIP model (float16 storage, loads in float32) with its processor and tokenizer."""
    with atomic_dir(target) as tmp:
        save_half(clip, tmp)
        for item in tokenizer_dir.iterdir():
            shutil.copy2(item, tmp / item.name)
        clip_processor(CLIPTokenizer.from_pretrained(tokenizer_dir)).save_pretrained(tmp)


def train_world(
    out_dir: Path,
    seed: int = 0,
    config: WorldConfig | None = None,
    force: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
    checkpoint_every: int = 500,
) -> Path:
    """Train the world into ``out_dir`` and return the pipeline folder ``out_dir/pipeline``.

    ``out_dir`` must be empty or absent, unless ``force`` (erase it first) or ``resume`` (continue after
    the last finished stage, or from the UNet stage's last checkpoint, saved every ``checkpoint_every``
    steps; seed and configuration must match). Writes ``out_dir/training.json`` with
    the configuration, per-stage wall time and loss curves. ``device`` selects where the models train
    (random draws come from CPU generators on every device; bit-identical results hold per device).
    """
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    manifest = training_manifest(config, seed)
    _check_out_dir(out_dir, manifest, force, resume)
    stages_dir = out_dir / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stages_dir / "manifest.json", manifest)
    tokenizer_dir = stages_dir / "tokenizer"
    if not tokenizer_dir.is_dir():
        with atomic_dir(tokenizer_dir) as tmp:
            write_clip_tokenizer(tmp, pad_token=END_TOKEN)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    progress = progress or _progress()
    emit = log or (lambda message: None)

    def stage_info(name: str) -> dict:
        path = stages_dir / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def finish_stage(name: str, model, started: float, losses: list[float]) -> None:
        with atomic_dir(stages_dir / name) as tmp:
            model.save_pretrained(tmp)
        record = {"seconds": time.time() - started, "losses": losses, "device": str(device)}
        write_json_atomic(stages_dir / f"{name}.json", record)
        emit(f"stage {name} done in {time.time() - started:.0f} s")

    with progress:
        if not (stages_dir / "vae.json").is_file():
            started = time.time()
            vae, losses = train_vae(config, seed, progress, device)
            finish_stage("vae", vae, started, losses)
        vae = AutoencoderKL.from_pretrained(stages_dir / "vae").to(device).eval()
        if not (stages_dir / "clip.json").is_file():
            started = time.time()
            clip, losses = train_clip(config, seed, tokenizer, progress, device)
            finish_stage("clip", clip, started, losses)
        clip = CLIPModel.from_pretrained(stages_dir / "clip").eval()
        text_encoder = text_encoder_from_clip(clip).to(device)
        text_encoder.requires_grad_(False)
        if not (stages_dir / "unet.json").is_file():
            started = time.time()
            partial = stages_dir / "unet-checkpoint"
            unet, losses = train_unet(
                config, seed, vae, tokenizer, text_encoder, progress, device, partial, checkpoint_every
            )
            finish_stage("unet", unet, started, losses)
            shutil.rmtree(partial, ignore_errors=True)
        unet = UNet2DConditionModel.from_pretrained(stages_dir / "unet").eval()

    keep = trained_token_ids(tokenizer)
    for embedding in (text_encoder.get_input_embeddings(), clip.text_model.embeddings.token_embedding):
        zero_untrained_token_embeddings(embedding, keep)
    save_pipeline(out_dir / "pipeline", vae.cpu(), text_encoder.cpu(), tokenizer, unet)
    save_clip(out_dir / "clip", clip, tokenizer_dir)
    summary = {
        **manifest,
        "seconds": {name: stage_info(name)["seconds"] for name in STAGES},
        "final_loss": {name: float(np.mean(stage_info(name)["losses"][-100:])) for name in STAGES},
        "scaling_factor": vae.config.scaling_factor,
        "devices": {name: stage_info(name).get("device", "unrecorded") for name in STAGES},
    }
    write_json_atomic(out_dir / "training.json", summary)
    return out_dir / "pipeline"
