"""Prompts of SD3 / SD3.5 and FLUX.1 encoded exactly as their pipelines do, and the key positions in them.

The states come from the pipeline's own ``encode_prompt`` (so the keys are the very vectors the transformer sees
at generation, with the pipeline's default ``max_sequence_length``):

- SD3: ``context`` (B, 77 + T, 4096) = [CLIP-L ⊕ CLIP-G penultimate states, zero-padded to the T5 width ;
  T5 states] along the sequence; ``pooled`` (B, 2048) = CLIP-L ⊕ CLIP-G projected EOS states.
- FLUX: ``context`` (B, T, 4096) = T5 states; ``pooled`` (B, 768) = CLIP-L's pooled output (its EOS state).

Each encoder's stretch of the context sequence is a :class:`SequencePart` with its own token ids and key positions:
CLIP's *first* end-of-text token (SD3's second tokenizer pads with ``"!"``, CLIP-L with the EOS id itself) and
T5's ``</s>``. T5 is bidirectional and these pipelines pass it no attention mask, so its states depend on the
padding too; encoding always covers the full window, never a prefix. The pooled embedding is a part of length one
whose only key is the pooled vector itself (CLIP's EOS state).

A part offers what :class:`~mist_debias.core.targets.EditProblem` asks of an encoder (``tokenize``, ``encode``,
``max_length``), so the key sets and target rules of the UNet families apply to each part unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from mist_debias.core.errors import PromptError
from mist_debias.core.families import detect_family
from mist_debias.core.text import TokenizedPrompt


def _tokenize(tokenizer, prompt: str, window: int, name: str) -> TokenizedPrompt:
    """Token ids padded to ``window`` and the first EOS; :class:`PromptError` when the EOS would be cut off."""
    ids = tokenizer(prompt, padding="max_length", max_length=window, truncation=False).input_ids
    if len(ids) > window:
        raise PromptError(f"prompt is too long for {name}: {len(ids)} tokens, at most {window} fit: {prompt[:60]!r}…")
    return TokenizedPrompt(prompt=prompt, input_ids=tuple(ids), eos_index=ids.index(tokenizer.eos_token_id))


class TransformerPromptEncoder:
    """Context and pooled embeddings of prompts for an SD3 or FLUX pipeline, cached per prompt."""

    def __init__(self, pipe: DiffusionPipeline, max_sequence_length: int | None = None) -> None:
        self.family = detect_family(pipe)
        if self.family not in ("sd3", "flux"):
            raise ValueError(f"{type(pipe).__name__} is not an SD3 or FLUX pipeline")
        self.pipe = pipe
        self.clip_tokenizer = pipe.tokenizer
        self.clip_length = int(pipe.tokenizer.model_max_length)
        if self.family == "sd3":
            has_t5 = getattr(pipe, "text_encoder_3", None) is not None
            self.t5_tokenizer = pipe.tokenizer_3 if has_t5 else None
        else:
            self.t5_tokenizer = pipe.tokenizer_2
        default = inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
        self.t5_length = int(max_sequence_length or default)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.family == "sd3":
            context, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                max_sequence_length=self.t5_length,
            )
        else:
            context, pooled, _ = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, max_sequence_length=self.t5_length
            )
        return context, pooled

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context (B, P, d), pooled (B, d_pooled))`` of ``prompts``, as the pipeline computes them."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            context, pooled = self._encode_batch(new)
            self._cache.update({p: (context[i], pooled[i]) for i, p in enumerate(new)})
        return (
            torch.stack([self._cache[p][0] for p in prompts]),
            torch.stack([self._cache[p][1] for p in prompts]),
        )

    def context_parts(self) -> list[SequencePart]:
        """The context sequence's parts that carry keys: SD3 [CLIP, T5] (T5 only if present), FLUX [T5]."""
        parts = []
        if self.family == "sd3":
            parts.append(SequencePart(self, "clip", 0, self.clip_length))
        if self.t5_tokenizer is not None:
            offset = self.clip_length if self.family == "sd3" else 0
            parts.append(SequencePart(self, "t5", offset, self.t5_length))
        return parts

    def pooled_part(self) -> SequencePart:
        return SequencePart(self, "pooled", 0, 1)

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """The CLIP tokenization (checks that the prompt fits CLIP's window, as the UNet families do)."""
        return _tokenize(self.clip_tokenizer, prompt, self.clip_length, "CLIP")


@dataclass(frozen=True)
class SequencePart:
    """One encoder's stretch ``[offset, offset + max_length)`` of the context sequence, or the pooled vector.

    Implements the encoder interface :class:`~mist_debias.core.targets.EditProblem` uses.
    """

    encoder: TransformerPromptEncoder
    name: str
    offset: int
    max_length: int

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        if self.name == "t5":
            return _tokenize(self.encoder.t5_tokenizer, prompt, self.max_length, "T5")
        clip = self.encoder.tokenize(prompt)
        if self.name == "clip":
            return clip
        return TokenizedPrompt(prompt=prompt, input_ids=(clip.input_ids[clip.eos_index],), eos_index=0)

    def encode(self, prompts: list[str], num_positions: int | None = None) -> torch.Tensor:
        """States (B, P, d) of this part (P = ``num_positions`` or the whole part), from the full encoding."""
        context, pooled = self.encoder.encode(prompts)
        states = (
            pooled[:, None, :] if self.name == "pooled" else context[:, self.offset : self.offset + self.max_length]
        )
        return states[:, : num_positions or self.max_length]
