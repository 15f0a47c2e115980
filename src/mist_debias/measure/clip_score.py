"""CLIP score of generated images against their prompts (an optional image–text alignment measure).

With unit-norm CLIP image embedding ``f(x)`` and text embedding ``g(p)`` of the raw prompt,

    CLIPScore(x, p) = 100 · max(cos(f(x), g(p)), 0)

(the convention of torchmetrics' ``CLIPScore``; Hessel et al. 2021 scale by 2.5 instead of 100). It needs CLIP
weights (a hub id or a local folder); evaluation runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mist_debias.measure.classifiers.clip import CLIPCellClassifier

RAW_PROMPT_TEMPLATE = ("{phrase}",)


class CLIPScorer:
    """CLIP scores of (image, prompt) pairs with one CLIP model (text embeddings cached per prompt)."""

    def __init__(self, clip: CLIPCellClassifier) -> None:
        if tuple(clip.templates) != RAW_PROMPT_TEMPLATE:
            raise ValueError("the CLIP score embeds the raw prompt: build the classifier with templates ('{phrase}',)")
        self.clip = clip

    @classmethod
    def load(cls, path_or_id: str, device: str | torch.device = "cpu") -> CLIPScorer:
        """Load a CLIP model (hub id or folder); a one-line :class:`ClassifierError` if it cannot."""
        return cls(CLIPCellClassifier.load(path_or_id, device=device, templates=RAW_PROMPT_TEMPLATE))

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """``(n,)`` float64 CLIP scores of ``images[i]`` against ``prompts[i]``."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return np.zeros(0)
        image_features = self.clip.image_embeddings(images).double()
        text_features = self.clip.text_embeddings(list(prompts)).double()
        cosine = (image_features * text_features).sum(dim=1).numpy()
        return 100.0 * np.maximum(cosine, 0.0)
