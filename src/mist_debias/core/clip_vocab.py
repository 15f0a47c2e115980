"""Derive the CLIP BPE tokenizer files offline from ``bpe_simple_vocab_16e6.txt.gz``.

The hub's ``openai/clip-vit-large-patch14`` tokenizer (``vocab.json`` + ``merges.txt``) is a pure function of
the BPE merge list that ships with CLIP:

    vocab = bytes_to_unicode() ∪ {b + "</w>"} ∪ {a + b for the first 48,894 merges}
            ∪ {<|startoftext|>, <|endoftext|>}

which gives 49,408 ids. The merge list is packaged with this library, so every tokenizer the project builds
is the real one, without a network.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte → printable-unicode map used by GPT-2 and CLIP BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def bundled_bpe_path() -> Path:
    """Path of the CLIP merge list packaged with ``mist_debias``."""
    return Path(str(resources.files("mist_debias") / "assets" / BPE_FILE))


def read_merges(bpe_path: Path | None = None) -> list[str]:
    """The first 48,894 merges (lines 1..48894 after the header) of the CLIP BPE file."""
    path = bpe_path or bundled_bpe_path()
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    return lines[1 : NUM_MERGES + 1]


def build_vocab(merges: list[str]) -> dict[str, int]:
    """Token → id map, in CLIP's order (49,408 entries)."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer(
    pad_token: str = END_TOKEN, model_max_length: int = 77, bpe_path: Path | None = None
) -> CLIPTokenizer:
    """An in-memory CLIP tokenizer; ``pad_token`` is ``<|endoftext|>`` (SD1.x) or ``"!"`` (SD2.x, SDXL's second)."""
    merges = read_merges(bpe_path)
    return CLIPTokenizer(
        vocab=build_vocab(merges),
        merges=[tuple(merge.split()) for merge in merges],
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def write_clip_tokenizer(
    out_dir: Path, pad_token: str = END_TOKEN, model_max_length: int = 77, bpe_path: Path | None = None
) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config of a CLIP tokenizer to ``out_dir``.

    ``pad_token`` is ``<|endoftext|>`` for SD1.x and ``"!"`` (id 0) for SD2.x and SDXL's second tokenizer.
    """
    merges = read_merges(bpe_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"),
        merges=str(out_dir / "merges.txt"),
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
