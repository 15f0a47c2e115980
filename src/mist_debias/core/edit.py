"""``Edit``: a solved cross-attention edit as a rank-k adapter — apply, revert, scale, save, load, export.

An edit stores ``W' − W = L R`` for every edited projection: one shared ``R ∈ R^{k×d}`` and a per-layer
``L ∈ R^{m×k}`` (kilobytes, not a UNet). Applying at strength α sets ``W ← W + α L R``; reverting restores the
original tensors bit for bit. The file format is safetensors (``right`` and ``left.<layer name>`` tensors,
float32) with JSON metadata: format version, base-model fingerprint, layers, concepts, attribute prompts and
weights, hyperparameters and library version.

The edit is exactly a LoRA with ``lora_A = R`` and ``lora_B = α L`` (rank k, alpha = k), which is how it is
exported for ``pipe.load_lora_weights``.

SD3 / FLUX edits change layers with different input spaces (see :mod:`mist_debias.core.families`): ``right`` is
the context space's ``R`` and ``layer_rights`` holds the ``R`` of each layer in another space (stored as
``right.<layer name>``). Their LoRA pads the smaller factors with zero rows/columns to one rank, which leaves
every ``B A`` unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mist_debias import __version__
from mist_debias.core.atomic import atomic_directory, atomic_file
from mist_debias.core.errors import EditFileError
from mist_debias.core.families import denoiser_component, find_projections
from mist_debias.core.layers import Projection
from mist_debias.core.solve import LowRankUpdate

FORMAT = "mist-debias-edit"
FORMAT_VERSION = 3
"""The newest format this library reads. 1: one shared ``R``, float16 fingerprint; 2: sign-bit fingerprint
(dtype-independent); 3: as 2, with layers that have their own ``R`` (SD3/FLUX input spaces). Older files are read."""
FINGERPRINT_PREFIX = "sign-sha256:"
EDIT_FILE_NAME = "edit.safetensors"
"""The edit's file name inside a folder (a debias run folder), for :meth:`Edit.from_pretrained`."""
RIGHT_KEY = "right"
RIGHT_PREFIX = "right."
LEFT_PREFIX = "left."


def fingerprint(projections: list[Projection]) -> str:
    """SHA-256 of the edited tensors' names, shapes and sign bits, prefixed ``"sign-sha256:"``.

    The same model loaded in float32, float16 or bfloat16 holds different numbers: each rounding keeps a
    different share of the mantissa, and float16 flushes tiny values to ±0. No hash of rounded values is the
    same for all three (a float16 value can sit on a bfloat16 rounding midpoint, so rounding the float16 model
    to bfloat16 differs from rounding the float32 one in a few percent of the weights). The sign bit is what
    every IEEE round-to-nearest conversion keeps (a value flushed to zero keeps its sign as −0), so hashing
    ``signbit(W)`` gives one fingerprint per model in every dtype, while two independently trained or
    initialised models differ in about half of their signs.
    """
    digest = hashlib.sha256()
    for projection in projections:
        weight = projection.module.weight.detach()
        digest.update(f"{projection.name}:{tuple(weight.shape)};".encode())
        digest.update(np.packbits(torch.signbit(weight).cpu().numpy()).tobytes())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def _float16_fingerprint(projections: list[Projection]) -> str:
    """The fingerprint of format-1 files: SHA-256 of names, shapes and values cast to float16."""
    digest = hashlib.sha256()
    for projection in projections:
        weight = projection.module.weight.detach()
        digest.update(f"{projection.name}:{tuple(weight.shape)};".encode())
        digest.update(weight.to(device="cpu", dtype=torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint_matches(projections: list[Projection], expected: str) -> bool:
    """Whether ``projections`` are the model ``expected`` was taken from (either fingerprint scheme)."""
    if expected.startswith(FINGERPRINT_PREFIX):
        return fingerprint(projections) == expected
    return _float16_fingerprint(projections) == expected


def _as_stored(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()


@dataclass
class AppliedEdit:
    """Handle of an edit applied in place; :meth:`revert` restores the original weights bit-exactly."""

    originals: dict[str, torch.Tensor]
    modules: dict[str, torch.nn.Linear]
    reverted: bool = False

    @torch.no_grad()
    def revert(self) -> None:
        if self.reverted:
            return
        for name, original in self.originals.items():
            self.modules[name].weight.copy_(original)
        self.reverted = True


@dataclass
class Edit:
    """A low-rank cross-attention edit: ``W ← W + α L R`` on the named projections."""

    right: torch.Tensor
    left: dict[str, torch.Tensor]
    base_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    layer_rights: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.right = _as_stored(self.right)
        self.left = {name: _as_stored(t) for name, t in self.left.items()}
        self.layer_rights = {name: _as_stored(t) for name, t in self.layer_rights.items()}

    @classmethod
    def from_update(cls, update: LowRankUpdate, projections: list[Projection], info: dict[str, Any]) -> Edit:
        """Wrap a solved :class:`LowRankUpdate` of ``projections`` (fingerprinted in their current state)."""
        rights = dict(getattr(update, "layer_rights", {}))
        return cls(update.right, dict(update.left), fingerprint(projections), info, rights)

    @property
    def rank(self) -> int:
        return max(int(r.shape[0]) for r in (self.right, *self.layer_rights.values()))

    def right_of(self, name: str) -> torch.Tensor:
        """``R`` of one layer: its own (another input space) or the shared one."""
        return self.layer_rights.get(name, self.right)

    @property
    def layer_names(self) -> list[str]:
        return list(self.left)

    def delta(self, name: str, scale: float = 1.0) -> torch.Tensor:
        """``α L R`` of one layer (float32, CPU)."""
        return scale * (self.left[name] @ self.right_of(name))

    def metadata(self) -> dict[str, Any]:
        """Everything the file records besides the tensors."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "library_version": __version__,
            "base_fingerprint": self.base_fingerprint,
            "rank": self.rank,
            "layers": self.layer_names,
            **({"layers_with_own_right": list(self.layer_rights)} if self.layer_rights else {}),
            **self.info,
        }

    @property
    def format_version(self) -> int:
        """2 for one shared ``R``, 3 when some layers have their own (see :data:`FORMAT_VERSION`)."""
        return 3 if self.layer_rights else 2

    def _projections(self, model: DiffusionPipeline | torch.nn.Module, check: bool) -> list[Projection]:
        found = {p.name: p for p in find_projections(model)}
        missing = [name for name in self.left if name not in found]
        if missing:
            raise EditFileError(f"edit does not fit this model: it has no layer {missing[0]}")
        projections = [found[name] for name in self.left]
        for projection in projections:
            expected = (self.left[projection.name].shape[0], self.right_of(projection.name).shape[1])
            if projection.weight_shape != expected:
                raise EditFileError(
                    f"edit does not fit this model: {projection.name} is {projection.weight_shape}, "
                    f"the edit expects {expected}"
                )
        if check and not fingerprint_matches(projections, self.base_fingerprint):
            raise EditFileError(
                "edit was made for another base model (fingerprint mismatch); load the model it was solved on"
            )
        return projections

    @torch.no_grad()
    def apply(self, model: DiffusionPipeline | torch.nn.Module, scale: float = 1.0, check: bool = True) -> AppliedEdit:
        """Add ``α L R`` to every edited projection of ``model`` (a pipeline or UNet) in place.

        The product is formed in float32 (in place for float32 weights; float16/bfloat16 weights are updated
        through a float32 copy and rounded once).

        ``check`` verifies the base-model fingerprint first. Returns a handle whose ``revert()`` restores the
        original tensors bit-exactly.
        """
        projections = self._projections(model, check)
        originals, modules = {}, {}
        for projection in projections:
            weight = projection.module.weight
            originals[projection.name] = weight.detach().clone()
            modules[projection.name] = projection.module
            left = self.left[projection.name].to(weight.device)
            right = self.right_of(projection.name).to(weight.device)
            if weight.dtype == torch.float32:
                weight.addmm_(left, right, alpha=scale)
            else:
                weight.copy_(torch.addmm(weight.float(), left, right, alpha=scale).to(weight.dtype))
        return AppliedEdit(originals=originals, modules=modules)

    @contextmanager
    def applied(self, model: DiffusionPipeline | torch.nn.Module, scale: float = 1.0) -> Iterator[AppliedEdit]:
        """Context manager: the edit is applied inside the block and reverted after it."""
        handle = self.apply(model, scale)
        try:
            yield handle
        finally:
            handle.revert()

    def save(self, path: Path, force: bool = False) -> Path:
        """Write the edit as one ``.safetensors`` file (atomic)."""
        tensors = {RIGHT_KEY: self.right, **{LEFT_PREFIX + name: t for name, t in self.left.items()}}
        tensors.update({RIGHT_PREFIX + name: t for name, t in self.layer_rights.items()})
        header = {"format": FORMAT, "format_version": str(self.format_version), "mist": json.dumps(self.metadata())}
        with atomic_file(Path(path), force=force) as temp:
            save_file(tensors, str(temp), metadata=header)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path_or_folder: str | Path) -> Edit:
        """Load an edit the way diffusers loads models: from an edit file, or from a folder holding
        ``edit.safetensors`` (a debias run folder). A file path is :meth:`load`."""
        path = Path(path_or_folder)
        if path.is_dir():
            path = path / EDIT_FILE_NAME
            if not path.is_file():
                raise EditFileError(f"{path_or_folder} is a folder without {EDIT_FILE_NAME}")
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Edit:
        """Read an edit file; anything that is not a complete edit file raises :class:`EditFileError`."""
        path = Path(path)
        if not path.is_file():
            raise EditFileError(f"edit file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if header.get("format") != FORMAT:
                    raise EditFileError(f"{path} is a safetensors file but not a mist-debias edit")
                if int(header.get("format_version", "0")) > FORMAT_VERSION:
                    raise EditFileError(f"{path} needs a newer mist-debias (format {header['format_version']})")
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            info = json.loads(header["mist"])
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            if isinstance(error, EditFileError):
                raise
            raise EditFileError(f"{path} is not a readable edit file (truncated or not safetensors)") from None
        if not isinstance(info, dict) or not isinstance(info.get("layers", []), list):
            raise EditFileError(f"{path} is not a valid edit: its metadata is not an object with a layer list")
        layers = info.get("layers", [])
        own = [key[len(RIGHT_PREFIX) :] for key in tensors if key.startswith(RIGHT_PREFIX)]
        expected = {RIGHT_KEY, *(LEFT_PREFIX + name for name in layers), *(RIGHT_PREFIX + name for name in own)}
        declared = set(info.get("layers_with_own_right", []))
        if RIGHT_KEY not in tensors or set(tensors) != expected or set(own) != declared or not declared <= set(layers):
            raise EditFileError(f"{path} is incomplete: its tensors do not match its layer list")
        if not isinstance(info.get("base_fingerprint"), str):
            raise EditFileError(f"{path} has no base-model fingerprint; it cannot be checked against a model")
        right = tensors[RIGHT_KEY]
        left = {name: tensors[LEFT_PREFIX + name] for name in layers}
        rights = {name: tensors[RIGHT_PREFIX + name] for name in own}
        _check_factor_shapes(path, right, left, rights)
        known = {
            "format",
            "format_version",
            "library_version",
            "base_fingerprint",
            "rank",
            "layers",
            "layers_with_own_right",
        }
        extra = {key: value for key, value in info.items() if key not in known}
        return cls(right, left, info["base_fingerprint"], extra, rights)

    def lora_state_dict(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """PEFT LoRA tensors: ``lora_A = R`` (r × d), ``lora_B = α L`` (m × r); with alpha = r, ΔW = B A.

        Factors of rank k < r (a space with fewer keys) are padded with zero rows of ``R`` and zero columns of
        ``L``, so one rank r = :attr:`rank` serves every layer and ``B A`` is unchanged.
        """
        state = {}
        for name, left in self.left.items():
            right = self.right_of(name)
            padding = self.rank - right.shape[0]
            state[f"{name}.lora_A.weight"] = torch.nn.functional.pad(right, (0, 0, 0, padding))
            state[f"{name}.lora_B.weight"] = torch.nn.functional.pad(scale * left, (0, padding))
        return state

    def export_lora(self, pipe: DiffusionPipeline, out_dir: Path, scale: float = 1.0, force: bool = False) -> Path:
        """Write a diffusers LoRA folder that ``pipe.load_lora_weights(out_dir)`` loads."""
        self._projections(pipe, check=True)
        metadata = {"r": self.rank, "lora_alpha": self.rank, "target_modules": self.layer_names}
        component = denoiser_component(pipe)
        layers = {
            f"{component}_lora_layers": self.lora_state_dict(scale),
            f"{component}_lora_adapter_metadata": metadata,
        }
        with atomic_directory(Path(out_dir), force=force) as temp:
            type(pipe).save_lora_weights(str(temp), **layers)
        return Path(out_dir)

    def export_pipeline(self, pipe: DiffusionPipeline, out_dir: Path, scale: float = 1.0, force: bool = False) -> Path:
        """Write a complete diffusers pipeline folder with the edit baked into the UNet weights."""
        with atomic_directory(Path(out_dir), force=force) as temp, self.applied(pipe, scale):
            pipe.save_pretrained(str(temp), safe_serialization=True)
        return Path(out_dir)


def _check_factor_shapes(
    path: Path, right: torch.Tensor, left: dict[str, torch.Tensor], rights: dict[str, torch.Tensor]
) -> None:
    """Every ``R`` is k × d and every ``L`` is m × k with its own ``R``'s k, or :class:`EditFileError`."""
    for name, factor in {RIGHT_KEY: right, **{RIGHT_PREFIX + n: r for n, r in rights.items()}}.items():
        if factor.ndim != 2:
            raise EditFileError(
                f"{path} is not a valid edit: {name} must be a matrix, it has shape {tuple(factor.shape)}"
            )
    for name, factor in left.items():
        if factor.ndim != 2:
            raise EditFileError(
                f"{path} is not a valid edit: {LEFT_PREFIX}{name} must be a matrix, it has shape {tuple(factor.shape)}"
            )
        rank = rights.get(name, right).shape[0]
        if factor.shape[1] != rank:
            raise EditFileError(
                f"{path} is not a valid edit: {LEFT_PREFIX}{name} is {factor.shape[0]}×{factor.shape[1]} "
                f"but its right factor has rank {rank}"
            )
