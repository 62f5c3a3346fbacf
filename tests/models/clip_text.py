"""Format-faithful CLIP tokenizer fixtures, written for the tests.

* :func:`write_openai_bpe`: a ``bpe_simple_vocab_16e6.txt.gz`` like OpenAI's (``openai/CLIP``
  ``clip/simple_tokenizer.py``): gzip text, the header line ``"bpe_simple_vocab_16e6.txt#version: 0.2``,
  then one merge per line (two space-separated symbols), newline-terminated, and more merge lines
  than the 49152 - 256 - 2 = 48894 the tokenizer reads (the real file has 262144). The first merges
  build the given words character by character, left to right, so prompts made of them use real
  merges; filler merges of two byte symbols follow. The vocabulary is then 49408 tokens, as the real
  one (``vocab_size`` of OpenAI's CLIP text towers).
* :func:`write_hf_vocab`: the Hub's ``vocab.json`` / ``merges.txt`` (header ``#version: 0.2``) for
  the same merges, numbered as OpenAI numbers its vocabulary.
* :func:`openai_tokenize`: OpenAI's encoding (byte symbols, BPE by merge rank, ``</w>`` word ends,
  start/end tokens, ``clip.tokenize`` padding with 0 and ``truncate=True``) for ASCII prompts.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import torch

BPE_HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2'
USED_MERGES = 49152 - 256 - 2
CONTEXT = 77


_PRINTABLE = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
_REST = [b for b in range(256) if b not in _PRINTABLE]
#: symbol of every byte value: printable Latin-1 bytes as themselves, the others as U+0100, U+0101, ...
_SYMBOL = {**{b: chr(b) for b in _PRINTABLE}, **{b: chr(0x100 + k) for k, b in enumerate(_REST)}}


def byte_symbol_table() -> list[str]:
    """The byte symbols in vocabulary order: the printable ones first, then the others."""
    return [_SYMBOL[b] for b in _PRINTABLE + _REST]


def _byte_symbol(byte: int) -> str:
    return _SYMBOL[byte]


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that join each word left to right: (w0, w1), (w0w1, w2), ... with ``</w>`` on the last."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = [_byte_symbol(b) for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def bpe_merges(words: list[str], total: int = 50_000) -> list[tuple[str, str]]:
    """All merge lines of the file: the words' merges, then fillers, ``total`` in all."""
    merges = word_merges(words)
    joined = {a + b for a, b in merges}
    table = byte_symbol_table()
    for a in table:
        for b in table:
            if len(merges) >= total:
                return merges
            if a + b not in joined:
                merges.append((a, b))
                joined.add(a + b)
    return merges


def write_openai_bpe(path: Path, words: list[str], total: int = 50_000) -> list[tuple[str, str]]:
    """Write the file; return the merges OpenAI's tokenizer uses (the first 48894 lines)."""
    merges = bpe_merges(words, total)
    text = BPE_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
    with gzip.open(path, "wb") as fh:
        fh.write(text.encode("utf-8"))
    return merges[:USED_MERGES]


def openai_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    table = byte_symbol_table()
    tokens = table + [s + "</w>" for s in table] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_hf_vocab(folder: Path, merges: list[tuple[str, str]]) -> None:
    """The Hub's tokenizer files for these merges (openai/clip-vit-base-patch16 layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(openai_vocab(merges), ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    symbols = [_byte_symbol(b) for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    while len(symbols) > 1:
        pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def openai_tokenize(prompts: list[str], merges: list[tuple[str, str]]) -> torch.Tensor:
    """``clip.tokenize(prompts, truncate=True)`` for ASCII prompts: ``[N, 77]`` int64."""
    vocab = openai_vocab(merges)
    ranks = {m: i for i, m in enumerate(merges)}
    sot, eot = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    out = torch.zeros(len(prompts), CONTEXT, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids = [sot]
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", " ".join(prompt.split()).lower()):
            ids += [vocab[s] for s in _bpe(word, ranks)]
        ids.append(eot)
        if len(ids) > CONTEXT:
            ids = ids[:CONTEXT]
            ids[-1] = eot
        out[row, : len(ids)] = torch.tensor(ids)
    return out


def prompt_words(classes: list[str], concepts: dict[str, list[str]], template: str = "a photo of a {}") -> list[str]:
    words = template.format("").split()
    for name in classes:
        for concept in [name, *concepts.get(name, [])]:
            words += concept.lower().split()
    return list(dict.fromkeys(words))


#: a tiny OpenAI ViT CLIP in the real layout (heads = width / 64), with the real text context
#: and vocabulary size, so that the BPE fixture's 49408 tokens fit its text tower
OPENAI_TINY = dict(embed=32, resolution=32, patch=16, width=64, layers=2, context=CONTEXT,
                   vocab=2 * 256 + USED_MERGES + 2, t_width=64, t_layers=2)
OPENAI_TINY_FILE = "ViT-tiny.pt"
OPENAI_TINY_KEYS = {"heads": 1, "act": "quick_gelu", "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711]}


def write_openai_clip_files(root: Path, data) -> tuple[torch.nn.Module, list[tuple[str, str]]]:
    """What a user of OpenAI's release has, at a tiny size: ``ViT-tiny.pt`` (TorchScript, fp16,
    OpenAI's layout; no family has its shape, so a student names its heads, activation and
    normalisation: ``OPENAI_TINY_KEYS``) and ``bpe_simple_vocab_16e6.txt.gz`` covering the
    prompts of ``data`` (classes and concepts).
    Returns the OpenAI-layout source module and the merges its tokenizer uses."""
    from tests.models.test_weights import make_torchscript_clip

    root.mkdir(parents=True, exist_ok=True)
    source = make_torchscript_clip(root / OPENAI_TINY_FILE, **OPENAI_TINY)
    merges = write_openai_bpe(root / "bpe_simple_vocab_16e6.txt.gz", prompt_words(data.classes, data.concepts))
    return source, merges


@torch.no_grad()
def openai_prototypes(source, merges, concepts: list[list[str]], template: str = "a photo of a {}") -> torch.Tensor:
    """Prototypes computed the reference way: OpenAI's tokenization and ``encode_text``."""
    rows = [source.encode_text(openai_tokenize([template.format(c) for c in names], merges)).mean(0)
            for names in concepts]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)
