"""Edit keys and target values for MIST and, on the same solver, the UCE and TIME baselines.

Every method edits with keys ``c`` taken from the concept prompt and, per key, aligned embeddings ``g_j`` of
the attribute (or destination) prompts j with weights ``w_j``. For one projection ``W`` the target value is

    mist (paper):   v* = W c + Σ_j w_j ‖W c‖ · W g_j / ‖W g_j‖
    mist (running): v_0 = W c,  v_j = v_{j−1} + w_j ‖v_{j−1}‖ · W g_j / ‖W g_j‖,  v* = v_J
                    (the official code's in-place form; kept for faithful reproduction)
    uce:            v* = W c + Σ_j w_j W g_j
    time:           v* = W c + Σ_j w_j (W g_j − W c)    (w = e_j maps the source onto destination j)

Key sets (positions of the concept prompt; attribute positions are aligned with them):

- ``eos``: the first end-of-text token (MIST). Attribute key: the attribute prompt's first EOS.
- ``eos+pad``: the EOS and every later (padding) position; attribute prompt j's key sits at the same offset
  from its own EOS. Offsets run up to the window end of the prompt whose EOS is latest.
- ``last-word``: the last content token before the EOS (UCE).
- ``all``: every position from start-of-text to the EOS (TIME); the destination is aligned with the source by
  their common prefix, their common suffix (the EOS included) and their differing middles paired from the end;
  source tokens without a counterpart keep their value (see :func:`_time_alignment`).

The edit is low rank with rank ≤ the number of keys k. For MIST and UCE every column of ``L = η_e (V* − W C)``
lies in the span of the projected attribute keys ``W g_j``, so with J attribute prompts shared by all concepts
(EOS keys) the rank is at most min(k, J). Embeddings are computed once per :class:`EditProblem`;
targets for new weights (the debias loop's iterations) cost a few small matrix products. All of it runs in
float64 on the CPU, whatever device the model is on (MPS has no float64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mist_debias.core.choices import KEY_SETS, METHODS, KeySet, Method, MistForm
from mist_debias.core.errors import MistError, PromptError
from mist_debias.core.solve import EditHyperparameters, LowRankUpdate, cpu_float64, shared_factor
from mist_debias.core.text import PromptEncoder, TokenizedPrompt

DEFAULT_KEYS: dict[str, str] = {"mist": "eos", "uce": "last-word", "time": "all"}


@dataclass(frozen=True)
class ConceptPrompts:
    """A concept prompt and the attribute (MIST, UCE) or destination (TIME) prompts it is edited towards."""

    prompt: str
    attributes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise PromptError("concept prompt is empty")
        if not self.attributes:
            raise PromptError(f"concept {self.prompt!r} has no attribute prompts")
        for attribute in self.attributes:
            if not attribute.strip():
                raise PromptError(f"an attribute prompt of concept {self.prompt!r} is empty")


KEEP = -1
"""Attribute position meaning "no counterpart": the key's target is its own value ``W c`` (it is kept)."""


def _aligned_positions(
    keys: KeySet, concept: TokenizedPrompt, attribute: TokenizedPrompt, window_end: int
) -> list[tuple[int, int]]:
    """(concept position, attribute position) pairs of one concept/attribute pair (:data:`KEEP` for none)."""
    if keys == "eos":
        return [(concept.eos_index, attribute.eos_index)]
    if keys == "last-word":
        return [(concept.last_word_index, attribute.last_word_index)]
    if keys == "eos+pad":
        return [(concept.eos_index + o, attribute.eos_index + o) for o in range(window_end)]
    return _time_alignment(concept.input_ids[: concept.eos_index + 1], attribute.input_ids[: attribute.eos_index + 1])


def _time_alignment(source: Sequence[int], destination: Sequence[int]) -> list[tuple[int, int]]:
    """TIME's token alignment of a source prompt with its destination (both from start-of-text to EOS).

    The common prefix maps onto itself and the common suffix (the EOS at least) onto the destination's suffix
    from the end. What is left differs: the source middle ``source[p:ls−s]`` and the destination middle
    ``destination[p:ld−s]`` are paired from their ends, last with last. For TIME's own edits (the destination
    adds words, "a pack of roses" → "a pack of blue roses") the source middle is empty and every source token
    meets the same token in the destination. A source middle longer than the destination's (the destination
    drops words) leaves its first tokens without a counterpart: they are paired with :data:`KEEP` (target
    ``W c``, the token keeps its value) and never with a token outside the destination middle.
    """
    prefix = 0
    while prefix < min(len(source), len(destination)) - 1 and source[prefix] == destination[prefix]:
        prefix += 1
    suffix = 1  # the EOS
    while suffix < min(len(source), len(destination)) - prefix and source[-1 - suffix] == destination[-1 - suffix]:
        suffix += 1
    source_middle = range(prefix, len(source) - suffix)
    destination_middle = range(prefix, len(destination) - suffix)
    unmatched = max(len(source_middle) - len(destination_middle), 0)
    pairs = [(i, i) for i in range(prefix)]
    pairs += [(i, KEEP) for i in source_middle[:unmatched]]
    pairs += list(
        zip(
            source_middle[unmatched:],
            destination_middle[len(destination_middle) - len(source_middle[unmatched:]) :],
            strict=True,
        )
    )
    pairs += [(len(source) - 1 - i, len(destination) - 1 - i) for i in reversed(range(suffix))]
    return pairs


class EditProblem:
    """Keys, aligned attribute embeddings and the shared factor ``R`` for a set of concept edits.

    Build once (this encodes the prompts); then :meth:`solve` any weights, from the original or a compounded
    ``W``, in a few small matrix products per layer.
    """

    def __init__(
        self,
        encoder: PromptEncoder,
        concepts: Sequence[ConceptPrompts],
        method: Method = "mist",
        keys: KeySet | None = None,
        preserve_prompts: Sequence[str] = ("",),
        hparams: EditHyperparameters | None = None,
        mist_form: MistForm = "paper",
    ) -> None:
        if method not in METHODS:
            raise MistError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        keys = keys or DEFAULT_KEYS[method]  # type: ignore[assignment]
        if keys not in KEY_SETS:
            raise MistError(f"unknown key set {keys!r}; expected one of {', '.join(KEY_SETS)}")
        if not concepts:
            raise MistError("at least one concept is needed")
        self.concepts = tuple(concepts)
        self.method = method
        self.keys = keys
        self.mist_form = mist_form
        self.hparams = (hparams or EditHyperparameters()).for_method(method)
        self.preserve_prompts = tuple(preserve_prompts)
        self._build_bank(encoder)
        self.right = shared_factor(self.edit_keys, self.preserve_keys, self.hparams)

    def _build_bank(self, encoder: PromptEncoder) -> None:
        prompts = sorted({c.prompt for c in self.concepts} | {a for c in self.concepts for a in c.attributes})
        tokenized = {prompt: encoder.tokenize(prompt) for prompt in prompts}
        window = encoder.max_length
        columns: dict[tuple[str, int], int] = {}
        self.concept_columns: list[torch.Tensor] = []
        self.attribute_columns: list[torch.Tensor] = []
        for concept in self.concepts:
            source = tokenized[concept.prompt]
            latest_eos = max(tokenized[p].eos_index for p in (concept.prompt, *concept.attributes))
            per_attribute = [
                _aligned_positions(self.keys, source, tokenized[a], window - latest_eos)  # type: ignore[arg-type]
                for a in concept.attributes
            ]
            source_positions = [pos for pos, _ in per_attribute[0]]
            if any([pos for pos, _ in pairs] != source_positions for pairs in per_attribute):
                raise MistError(
                    f"destinations of {concept.prompt!r} align with different source tokens; give one "
                    "destination per concept with the 'all' key set"
                )
            concept_index = [columns.setdefault((concept.prompt, p), len(columns)) for p in source_positions]
            attribute_index = [
                [columns.setdefault((concept.prompt, p) if q == KEEP else (a, q), len(columns)) for p, q in pairs]
                for a, pairs in zip(concept.attributes, per_attribute, strict=True)
            ]
            self.concept_columns.append(torch.tensor(concept_index))
            self.attribute_columns.append(torch.tensor(attribute_index))
        needed = max(position for _, position in columns) + 1
        states = cpu_float64(encoder.encode(prompts, num_positions=needed))
        prompt_row = {prompt: row for row, prompt in enumerate(prompts)}
        bank = torch.empty(states.shape[-1], len(columns), dtype=torch.float64)
        for (prompt, position), column in columns.items():
            bank[:, column] = states[prompt_row[prompt], position]
        self.bank = bank
        self.concept_key_columns = torch.cat(self.concept_columns)
        self.edit_keys = bank[:, self.concept_key_columns]
        # per key: its concept, and its attribute columns padded (with the key itself, at weight 0) to J_max
        max_attributes = max(len(c.attributes) for c in self.concepts)
        self.key_concept = torch.cat(
            [torch.full((len(cols),), i, dtype=torch.long) for i, cols in enumerate(self.concept_columns)]
        )
        padded = []
        for c_cols, a_cols in zip(self.concept_columns, self.attribute_columns, strict=True):
            fill = c_cols[:, None].expand(-1, max_attributes - a_cols.shape[0])
            padded.append(torch.cat([a_cols.T, fill], dim=1))
        self.key_attribute_columns = torch.cat(padded)
        if self.preserve_prompts:
            preserve = cpu_float64(encoder.encode(list(self.preserve_prompts)))
            self.preserve_keys: torch.Tensor | None = preserve.reshape(-1, preserve.shape[-1]).T.contiguous()
        else:
            self.preserve_keys = None

    @property
    def rank_bound(self) -> int:
        """Number of edit keys k, an upper bound on the rank of every layer's update."""
        return int(self.edit_keys.shape[1])

    def key_weights(self, concept_weights: Sequence[Sequence[float]]) -> torch.Tensor:
        """Per-key attribute weights (k × J_max, zero-padded) from per-concept weights."""
        if len(concept_weights) != len(self.concepts):
            raise MistError(f"{len(self.concepts)} concepts but {len(concept_weights)} weight vectors")
        rows = torch.zeros(len(self.concepts), self.key_attribute_columns.shape[1], dtype=torch.float64)
        for i, (concept, w) in enumerate(zip(self.concepts, concept_weights, strict=True)):
            if len(w) != len(concept.attributes):
                raise MistError(
                    f"concept {concept.prompt!r} has {len(concept.attributes)} attributes but {len(w)} weights"
                )
            rows[i, : len(w)] = torch.tensor([float(x) for x in w], dtype=torch.float64)
        if not torch.isfinite(rows).all():
            raise MistError("weights must be finite numbers")
        return rows[self.key_concept]

    def targets(self, weight: torch.Tensor, concept_weights: Sequence[Sequence[float]]) -> torch.Tensor:
        """``V*`` (m × k, float64, CPU) of one projection for per-concept attribute weights."""
        return self._targets(cpu_float64(weight) @ self.bank, self.key_weights(concept_weights))

    def coupling(self, weights: Mapping[str, torch.Tensor], concept: int, step: float = 1e-3) -> np.ndarray:
        """How alike the edits toward concept ``concept``'s attributes are: the J×J correlation matrix

            C_jk = ⟨δ_j, δ_k⟩ / (‖δ_j‖ ‖δ_k‖),     δ_j = ∂V*/∂w_j at w = 0,

        with ``δ_j`` the change of every layer's target values (the concept's keys, all layers in ``weights``
        stacked) per unit weight on attribute j (for MIST ``‖W c‖ W g_j / ‖W g_j‖``, for UCE ``W g_j``, for TIME
        ``W g_j − W c``; taken by a forward difference of size ``step``, exact for every form but MIST's
        running one). A weight vector ``w`` moves the targets by ``Σ_j w_j δ_j``, whose squared size is
        ``wᵀ D C D w`` (D = diag ‖δ_j‖): directions in which C is nearly singular barely change the edit. With
        attributes that are products of axes (gender × age …) and embeddings that add up axis by axis, the
        interactions between axes are such directions — the edit moves each axis, not how the axes go together.
        """
        zero = [[0.0] * len(c.attributes) for c in self.concepts]
        moved = []
        for j in range(len(self.concepts[concept].attributes)):
            weights_j = [list(row) for row in zero]
            weights_j[concept][j] = step
            moved.append(self.key_weights(weights_j))
        columns: list[list[torch.Tensor]] = [[] for _ in moved]
        for weight in weights.values():
            projected = cpu_float64(weight) @ self.bank
            base = self._targets(projected, self.key_weights(zero))
            for column, key_weights in zip(columns, moved, strict=True):
                column.append(((self._targets(projected, key_weights) - base) / step).flatten())
        deltas = torch.stack([torch.cat(column) for column in columns], dim=1)
        gram = (deltas.T @ deltas).numpy()
        norms = np.sqrt(np.maximum(np.diag(gram), np.finfo(np.float64).tiny))
        return gram / np.outer(norms, norms)

    def _mixing(self, key_weights: torch.Tensor) -> torch.Tensor:
        """``M`` (columns × k): ``M[b, i]`` is the total weight key i gives bank column b, so that
        ``Σ_j w_ij x_{col(i, j)} = (X M)[:, i]`` for any per-column quantity X."""
        mixing = torch.zeros(self.bank.shape[1], key_weights.shape[0], dtype=torch.float64)
        keys = torch.arange(key_weights.shape[0])[:, None].expand_as(self.key_attribute_columns)
        mixing.index_put_((self.key_attribute_columns, keys), key_weights, accumulate=True)
        return mixing

    def _targets(self, projected: torch.Tensor, key_weights: torch.Tensor) -> torch.Tensor:
        """Targets from the projected bank ``W B`` (m × columns) and per-key weights (k × J).

        The sums over attributes are one product with the mixing matrix :meth:`_mixing`, so the cost does not
        grow with concepts × cells beyond a (columns × k) matrix.
        """
        base = projected[:, self.concept_key_columns]
        tiny = torch.finfo(torch.float64).tiny
        directions = projected / projected.norm(dim=0, keepdim=True).clamp_min(tiny)
        if self.method == "mist" and self.mist_form == "running":
            attributes = directions[:, self.key_attribute_columns]  # m × k × J
            value = base
            for j in range(key_weights.shape[1]):
                value = value + key_weights[:, j] * value.norm(dim=0) * attributes[:, :, j]
            return value
        mixing = self._mixing(key_weights)
        if self.method == "uce":
            return base + projected @ mixing
        if self.method == "time":
            return base + projected @ mixing - base * key_weights.sum(dim=1)
        return base + base.norm(dim=0) * (directions @ mixing)

    def solve(self, weights: Mapping[str, torch.Tensor], concept_weights: Sequence[Sequence[float]]) -> LowRankUpdate:
        """``W' − W = L R`` for every layer in ``weights`` (the current, possibly compounded, W).

        ``weights`` may live on any device, in any dtype; the solve runs in float64 on the CPU and the factors
        stay there (:meth:`Edit.apply <mist_debias.core.edit.Edit.apply>` moves them to the model).
        """
        key_weights = self.key_weights(concept_weights)
        left = {}
        for name, w in weights.items():
            projected = cpu_float64(w) @ self.bank
            targets = self._targets(projected, key_weights)
            left[name] = self.hparams.edit_scale * (targets - projected[:, self.concept_key_columns])
        return LowRankUpdate(right=self.right, left=left)
