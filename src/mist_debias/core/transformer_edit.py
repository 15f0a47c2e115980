"""The closed-form edit of SD3 / FLUX: one factorisation per input space of the text-entry layers.

Two layers are edited (see :mod:`mist_debias.core.families`): ``context_embedder`` (input: the context sequence)
and the pooled-text projection (input: the pooled CLIP embedding). Each input space s has its own keys and

    A_s = λ I + η_e Σ_keys c cᵀ + η_p Σ_preserve c_p c_pᵀ,      R_s = C_sᵀ A_s⁻¹,      ΔW = L R_s,

with the normal equations, targets and low-rank form of :mod:`mist_debias.core.solve` holding in each space.

- Context space keys, per concept: the key set's positions in each encoder's part of the sequence — with ``eos``,
  CLIP's first EOS and T5's ``</s>`` (SD3: 2 keys; FLUX: 1). Each key's target uses the attribute prompts'
  states at the aligned positions of the same part. Preserve: every position of the preserve prompts (SD3's
  77 CLIP + T positions, FLUX's T), padding included — padding is what the transformer attends to.
- Pooled space keys: the concept's pooled embedding (CLIP's EOS state), targets from the attribute prompts'
  pooled embeddings, whatever the context key set. Preserve: the preserve prompts' pooled embeddings.

So the rank of ΔW is at most the number of keys of its space (context: concepts × keys per concept × parts;
pooled: concepts). The biases of both layers are left as they are: they add the same vector to edited and
unedited outputs, and the targets are formed from ``W c`` as in the UNet families.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from mist_debias.core.families import CONTEXT_SPACE, POOLED_SPACE, detect_family, space_of
from mist_debias.core.solve import EditHyperparameters, LowRankUpdate, shared_factor
from mist_debias.core.targets import ConceptPrompts, EditProblem, KeySet, Method, MistForm
from mist_debias.core.text import PromptEncoder
from mist_debias.core.transformer_text import TransformerPromptEncoder


@dataclass(frozen=True)
class SpacedUpdate(LowRankUpdate):
    """A :class:`LowRankUpdate` whose layers live in several input spaces.

    ``right`` is the context space's ``R``; ``layer_rights`` gives the layers of other spaces their own ``R``.
    """

    layer_rights: dict[str, torch.Tensor] = field(default_factory=dict)

    def right_of(self, name: str) -> torch.Tensor:
        return self.layer_rights.get(name, self.right)

    @property
    def rank_bound(self) -> int:
        return max(int(r.shape[0]) for r in (self.right, *self.layer_rights.values()))

    def delta(self, name: str) -> torch.Tensor:
        return self.left[name] @ self.right_of(name)

    def __add__(self, other: LowRankUpdate) -> SpacedUpdate:
        """Compose two updates with the same keys (compounding): the L's add, every R is shared."""
        others = getattr(other, "layer_rights", {})
        same = torch.equal(self.right, other.right) and set(others) == set(self.layer_rights)
        if not same or not all(torch.equal(r, others[n]) for n, r in self.layer_rights.items()):
            raise ValueError("only updates with the same shared factors R (same keys and preserve sets) add")
        left = {name: self.left[name] + other.left[name] for name in self.left}
        return SpacedUpdate(self.right, left, dict(self.layer_rights))


class SpaceProblem:
    """One input space: the keys of its parts side by side, one ``A`` and one ``R`` for all of them.

    Each part is an :class:`EditProblem` on one stretch of the sequence (its targets are per key, so the
    space's ``L`` is the parts' ``L`` side by side); only the shared factor is recomputed, with every part's keys
    and the space's preserve keys in ``A``.
    """

    def __init__(self, parts: Sequence[EditProblem], preserve_keys: torch.Tensor | None) -> None:
        self.parts = tuple(parts)
        self.hparams: EditHyperparameters = self.parts[0].hparams
        self.edit_keys = torch.cat([part.edit_keys for part in self.parts], dim=1)
        self.preserve_keys = preserve_keys
        self.right = shared_factor(self.edit_keys, preserve_keys, self.hparams)

    @property
    def rank_bound(self) -> int:
        return int(self.edit_keys.shape[1])

    def left(self, weight: torch.Tensor, concept_weights: Sequence[Sequence[float]]) -> torch.Tensor:
        """``L = η_e (V* − W C)`` (m × k) of one layer of this space."""
        return torch.cat([part.solve({"w": weight}, concept_weights).left["w"] for part in self.parts], dim=1)


class TransformerEditProblem:
    """Keys, targets and shared factors of an SD3 or FLUX edit; :meth:`solve` mirrors :class:`EditProblem`."""

    def __init__(
        self,
        encoder: TransformerPromptEncoder,
        concepts: Sequence[ConceptPrompts],
        method: Method = "mist",
        keys: KeySet | None = None,
        preserve_prompts: Sequence[str] = ("",),
        hparams: EditHyperparameters | None = None,
        mist_form: MistForm = "paper",
    ) -> None:
        options = {"method": method, "hparams": hparams, "mist_form": mist_form, "preserve_prompts": ()}
        context_parts = [EditProblem(p, concepts, keys=keys, **options) for p in encoder.context_parts()]
        pooled_part = EditProblem(encoder.pooled_part(), concepts, keys="eos", **options)
        self.concepts = context_parts[0].concepts
        self.method = method
        self.keys = context_parts[0].keys
        self.mist_form = mist_form
        self.hparams = context_parts[0].hparams
        self.preserve_prompts = tuple(preserve_prompts)
        self.max_sequence_length = encoder.t5_length
        context_preserve = pooled_preserve = None
        if self.preserve_prompts:
            context, pooled = encoder.encode(list(self.preserve_prompts))
            context_preserve = context.reshape(-1, context.shape[-1]).T.to(torch.float64)
            pooled_preserve = pooled.T.to(torch.float64)
        self.spaces = {
            CONTEXT_SPACE: SpaceProblem(context_parts, context_preserve),
            POOLED_SPACE: SpaceProblem([pooled_part], pooled_preserve),
        }

    @property
    def rank_bound(self) -> int:
        """The largest number of keys of a space, an upper bound on the rank of every layer's update."""
        return max(space.rank_bound for space in self.spaces.values())

    def solve(self, weights: Mapping[str, torch.Tensor], concept_weights: Sequence[Sequence[float]]) -> SpacedUpdate:
        """``W' − W = L R_s`` for every layer in ``weights``, each in its own space s."""
        left = {name: self.spaces[space_of(name)].left(w, concept_weights) for name, w in weights.items()}
        rights = {name: self.spaces[space_of(name)].right for name in weights}
        return SpacedUpdate(
            right=self.spaces[CONTEXT_SPACE].right,
            left=left,
            layer_rights={name: r for name, r in rights.items() if space_of(name) != CONTEXT_SPACE},
        )


def edit_problem(
    pipe: DiffusionPipeline, concepts: Sequence[ConceptPrompts], **options
) -> EditProblem | TransformerEditProblem:
    """The edit problem of ``pipe``'s family (``options`` as for :class:`EditProblem`)."""
    if detect_family(pipe) in ("sd3", "flux"):
        return TransformerEditProblem(TransformerPromptEncoder(pipe), concepts, **options)
    return EditProblem(PromptEncoder(pipe), concepts, **options)


def family_info(pipe: DiffusionPipeline, problem: EditProblem | TransformerEditProblem) -> dict[str, str | int]:
    """What an edit file records about the model family: the family, and for SD3 / FLUX the T5 window the keys
    were encoded at (T5 states depend on the padding, so generation should use the same ``max_sequence_length``)."""
    info: dict[str, str | int] = {"family": detect_family(pipe)}
    if isinstance(problem, TransformerEditProblem):
        info["max_sequence_length"] = problem.max_sequence_length
    return info
