"""Which model family a pipeline belongs to, and which of its matrices the closed-form edit changes.

Text reaches the denoiser of each family through different layers:

- SD1.x / SD2.x / SDXL (``unet``): every cross-attention reads the text-encoder states through its own
  ``to_k`` / ``to_v``; all of them take the same input (the prompt's states), so one key set and one factor
  ``A`` serve all of them (:mod:`mist_debias.core.layers`).
- SD3 / SD3.5 and FLUX.1 (``transformer``, MMDiT): the prompt enters through two linear layers only —
  ``context_embedder`` maps the joint text sequence (SD3: CLIP-L ⊕ CLIP-G penultimate states zero-padded to the
  T5 width, followed along the sequence by the T5 states; FLUX: the T5 states) into the transformer's context
  stream, and ``time_text_embed.text_embedder.linear_1`` maps the pooled CLIP embedding into the conditioning
  vector that modulates every block. These two are edited; each has its own input space (context vs pooled),
  hence its own keys, its own ``A`` and its own shared factor ``R``.

The per-block ``add_k_proj`` / ``add_v_proj`` of the joint attention are *not* edited. Their input is the context
stream after the previous blocks have processed it (attention with the image tokens, feed-forward, modulation by
the timestep), so it differs from block to block and from step to step: the keys of block b would have to be
recomputed from block b's input at every timestep, ``A`` would no longer be shared, and the edit would depend on
the image being generated. ``context_embedder`` sees the text alone, before any of that, so one edit there reaches
every block.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import DiffusionPipeline
from torch import nn

from mist_debias.core.errors import ModelLoadError
from mist_debias.core.layers import PROJECTIONS, Projection, find_cross_attention_projections

FAMILY_LABELS: dict[str, str] = {
    "sd": "SD1.x/SD2.x",
    "sdxl": "SDXL",
    "sd3": "SD3/SD3.5",
    "flux": "FLUX.1",
}
CONTEXT_SPACE = "context"
POOLED_SPACE = "pooled"
CONTEXT_PROJECTION = "context_embedder"
POOLED_PROJECTION = "time_text_embed.text_embedder.linear_1"
TRANSFORMER_PROJECTIONS: dict[str, str] = {CONTEXT_PROJECTION: CONTEXT_SPACE, POOLED_PROJECTION: POOLED_SPACE}
TRANSFORMER_CLASSES: dict[str, str] = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
TEXT_COMPONENTS: dict[str, tuple[str, ...]] = {
    "sd": ("tokenizer", "text_encoder"),
    "sdxl": ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"),
    "sd3": ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"),
    "flux": ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"),
}


def unsupported(what: str) -> ModelLoadError:
    """The one-line error for a model the project cannot edit, naming the families it can."""
    families = ", ".join(FAMILY_LABELS.values())
    return ModelLoadError(f"cannot edit {what}: mist edits {families} text-to-image pipelines")


def denoiser_of(model: DiffusionPipeline | nn.Module) -> nn.Module:
    """The UNet or transformer of a pipeline (a module is returned as it is)."""
    for component in ("unet", "transformer"):
        denoiser = getattr(model, component, None)
        if isinstance(denoiser, nn.Module):
            return denoiser
    return model


def denoiser_component(model: DiffusionPipeline | nn.Module) -> str:
    """``"unet"`` or ``"transformer"``: the pipeline component the edited layers belong to."""
    return "transformer" if type(denoiser_of(model)).__name__ in TRANSFORMER_CLASSES else "unet"


def detect_family(pipe: DiffusionPipeline) -> str:
    """``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"``; :class:`ModelLoadError` naming the editable families otherwise.

    The family is read from the denoiser's class and the text components, not from the pipeline class, so
    variants with the same text path (e.g. img2img pipelines) are recognised too.
    """
    denoiser = denoiser_of(pipe)
    kind = type(denoiser).__name__
    if kind in TRANSFORMER_CLASSES:
        family = TRANSFORMER_CLASSES[kind]
    elif getattr(pipe, "unet", None) is None:
        raise unsupported(f"a {type(pipe).__name__} ({kind})")
    elif not any(getattr(m, "is_cross_attention", False) for m in denoiser.modules()):
        raise unsupported(f"a {type(pipe).__name__} whose UNet has no cross-attention")
    else:
        family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
    missing = [name for name in TEXT_COMPONENTS[family] if getattr(pipe, name, None) is None]
    if missing:
        raise unsupported(f"a {FAMILY_LABELS[family]} pipeline without its {missing[0]}")
    return family


def require_unet(pipe: DiffusionPipeline, command: str) -> None:
    """Refuse, in one line, a transformer family for a command that drives only UNet models so far."""
    if denoiser_component(pipe) != "unet":
        label = FAMILY_LABELS[detect_family(pipe)]
        raise ModelLoadError(
            f"{command} drives SD1.x/SD2.x and SDXL models so far; a {label} model is edited with mist edit"
        )


def space_of(layer_name: str) -> str:
    """The input space of an edited layer: ``"pooled"`` for the pooled-text projection, else ``"context"``."""
    return TRANSFORMER_PROJECTIONS.get(layer_name, CONTEXT_SPACE)


def find_projections(
    model: DiffusionPipeline | nn.Module,
    projections: Sequence[str] = PROJECTIONS,
    blocks: Sequence[str] | None = None,
) -> list[Projection]:
    """The editable text-facing matrices of a pipeline or denoiser, in a fixed order.

    UNet families: the cross-attention ``to_k`` / ``to_v`` (``projections`` and ``blocks`` filter them, see
    :func:`~mist_debias.core.layers.find_cross_attention_projections`). SD3 / FLUX: ``context_embedder`` and
    ``time_text_embed.text_embedder.linear_1``; the k/v and block filters do not apply there and are refused
    unless left at their defaults.
    """
    denoiser = denoiser_of(model)
    if type(denoiser).__name__ not in TRANSFORMER_CLASSES:
        return find_cross_attention_projections(denoiser, projections, blocks)
    if tuple(projections) != PROJECTIONS or blocks is not None:
        raise ModelLoadError(
            "the k/v and block filters select UNet cross-attention layers; SD3 and FLUX edits change "
            f"{CONTEXT_PROJECTION} and {POOLED_PROJECTION}"
        )
    modules = dict(denoiser.named_modules())
    return [Projection(name=name, module=modules[name]) for name in TRANSFORMER_PROJECTIONS]
