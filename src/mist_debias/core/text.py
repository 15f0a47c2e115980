"""Tokenise and encode prompts exactly as Stable Diffusion pipelines do, and locate key positions.

Cross-attention keys are the text-encoder states the UNet attends to:

- SD1.x / SD2.x: the last hidden state (after the final layer norm) of ``text_encoder`` — 77 positions.
- SDXL: the penultimate hidden states of ``text_encoder`` and ``text_encoder_2`` concatenated along features.

The CLIP text encoder is causal, so position i depends on tokens 0..i only. Encoding just the first P positions
therefore gives the same states for those positions as encoding all 77 (up to float rounding of the shorter
matrix products); :meth:`PromptEncoder.encode` uses that to encode only as far as the keys need.

Key positions (``TokenizedPrompt``):

- ``eos_index``: the *first* end-of-text token. SD1.x pads with the EOS id itself, so the first occurrence is
  the one that summarises the prompt; SD2.x and SDXL's second tokenizer pad with ``"!"``.
- ``last_word_index``: the last content token before the EOS (UCE's key).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from mist_debias.core.errors import PromptError


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt's token ids (padded to the window) and its key positions."""

    prompt: str
    input_ids: tuple[int, ...]
    eos_index: int

    @property
    def last_word_index(self) -> int:
        """Position of the last content token (the token before the first EOS)."""
        return self.eos_index - 1

    @property
    def num_positions(self) -> int:
        return len(self.input_ids)


class PromptEncoder:
    """Encodes prompts into the cross-attention context of a diffusers SD1.x, SD2.x or SDXL pipeline."""

    def __init__(self, pipe: DiffusionPipeline) -> None:
        encoders = [(pipe.tokenizer, pipe.text_encoder)]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
        self.encoders = encoders
        self.use_penultimate = len(encoders) > 1
        self.tokenizer = pipe.tokenizer
        self.max_length = int(pipe.tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return self.encoders[0][1].device

    @property
    def embedding_dim(self) -> int:
        return sum(int(encoder.config.hidden_size) for _, encoder in self.encoders)

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """Token ids padded to the window, with the first-EOS position.

        Raises :class:`PromptError` when the prompt has more than ``max_length − 2`` tokens, so that its EOS
        would be cut off by truncation and every key would silently be the wrong one.
        """
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.max_length, truncation=False).input_ids
        if len(ids) > self.max_length:
            raise PromptError(
                f"prompt is too long: {len(ids) - 2} tokens, at most {self.max_length - 2} fit before its "
                f"end-of-text token: {prompt[:60]!r}…"
            )
        return TokenizedPrompt(prompt=prompt, input_ids=tuple(ids), eos_index=ids.index(self.tokenizer.eos_token_id))

    @torch.no_grad()
    def encode(self, prompts: list[str], num_positions: int | None = None) -> torch.Tensor:
        """Cross-attention context of ``prompts``: (B, P, d) in the text encoder's dtype.

        ``num_positions`` (default: the full window) encodes only the first P positions, which are identical to
        the first P positions of the full encoding because the encoder is causal.
        """
        length = num_positions or self.max_length
        states = []
        for tokenizer, encoder in self.encoders:
            ids = tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True).input_ids
            ids = torch.tensor(ids, device=encoder.device)[:, :length]
            if self.use_penultimate:
                states.append(encoder(ids, output_hidden_states=True).hidden_states[-2])
            else:
                states.append(encoder(ids)[0])
        return torch.cat(states, dim=-1)
