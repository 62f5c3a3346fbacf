"""The CLIP tokenizer, from local files or a Hub id, and the checks that its token ids fit a CLIP
text tower.

Accepted tokenizer sources (:func:`load_tokenizer`):

* a folder with Hugging Face's files: ``vocab.json`` + ``merges.txt``, or ``tokenizer.json``
  (what ``save_pretrained`` writes and the Hub's ``openai/clip-vit-*`` repositories hold);
* OpenAI's own vocabulary, ``bpe_simple_vocab_16e6.txt.gz`` (the file, or a folder holding it):
  gzip-compressed text whose first line is a header (``"bpe_simple_vocab_16e6.txt#version: 0.2``)
  and every further line one BPE merge, two space-separated symbols. OpenAI's ``SimpleTokenizer``
  (``clip/simple_tokenizer.py``) uses the first 49152 - 256 - 2 = 48894 merges and numbers its
  vocabulary: the 256 byte symbols (GPT-2's byte-to-unicode table), the same with ``</w>``, the
  joined merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens for the real file).
  :func:`tokenizer_from_openai_bpe` builds exactly that vocabulary and merge list in memory and
  gives them to ``transformers.CLIPTokenizer``, the same construction as the Hub's files;
* a Hugging Face Hub id (``owner/name[@revision]``): its tokenizer files only (``vocab.json``,
  ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
  those it has) are downloaded into the Hugging Face cache on first use, and found there after,
  offline too (:func:`co2s.models.backbones.weights.hub.hub_snapshot`).

A source without a vocabulary is refused: transformers would otherwise build a tokenizer of two
special tokens that encodes every prompt to the same ids. :func:`encode_prompts` then checks the
tokenizer against the text tower: the vocabulary size must equal the tower's ``vocab_size`` and
every encoded prompt must end with the end-of-text token the tower pools at. Prompts longer than
the tower's context (77 tokens) are truncated, with a warning, to their first 75 tokens between
the start and end tokens, as OpenAI's ``clip.tokenize(..., truncate=True)`` does.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import torch

from co2s.errors import CheckpointError

OPENAI_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
#: merges OpenAI's SimpleTokenizer reads from the file (``merges[1:49152-256-2+1]``)
OPENAI_BPE_MERGES = 49152 - 256 - 2
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"

_HF_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


def load_tokenizer(source: str | Path, cache_dir: str | Path | None = None):
    """A ``transformers.CLIPTokenizer`` from ``source`` (see the module docstring); a Hub id's files
    are downloaded on first use into the Hugging Face cache (``cache_dir`` overrides it).

    Raises :class:`CheckpointError` naming ``source`` when it holds no CLIP vocabulary.
    """
    label = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        if _is_gzip(path):
            return tokenizer_from_openai_bpe(path)
        raise CheckpointError(
            f"{label}: not a tokenizer vocabulary (a CLIP weight file holds none): give OpenAI's "
            f"{OPENAI_BPE_NAME}, a folder with vocab.json and merges.txt, or a Hub id "
            "(text.tokenizer, or --tokenizer)")
    if path.is_dir():
        if any(all((path / f).is_file() for f in files) for files in _HF_FILES):
            return _from_pretrained(path, label)
        if (path / OPENAI_BPE_NAME).is_file():
            return tokenizer_from_openai_bpe(path / OPENAI_BPE_NAME)
        raise CheckpointError(
            f"{label}: the folder holds no CLIP tokenizer vocabulary (vocab.json and merges.txt, "
            f"tokenizer.json, or OpenAI's {OPENAI_BPE_NAME}); give the tokenizer's folder or file "
            "as text.tokenizer (or --tokenizer)")
    from co2s.models.backbones.weights.hub import parse_hub_source

    if parse_hub_source(label) is not None and not label.startswith((".", "/", "~")):
        return _from_pretrained(_hub_tokenizer_folder(label, cache_dir), label)
    raise CheckpointError(f"{label}: tokenizer source not found (no such file or directory)")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _from_pretrained(folder: Path, label: str):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{label}: cannot load a CLIP tokenizer from {folder}: {exc}") from None


def _hub_tokenizer_folder(source: str, cache_dir: str | Path | None) -> Path:
    """The Hub-cache folder of ``source``'s tokenizer files, downloaded there first if they are not
    (only those files: no weights)."""
    from co2s.models.backbones.weights.hub import hub_snapshot

    return hub_snapshot(source, cache_dir, "tokenizer").path


# --------------------------------------------------------------------------------------------
# OpenAI's bpe_simple_vocab_16e6.txt.gz


def byte_symbols() -> list[str]:
    """The 256 byte symbols of CLIP's (and GPT-2's) byte-level BPE, in vocabulary order: the
    printable Latin-1 bytes stand for themselves, the other bytes (in byte order) for the
    characters from U+0100 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_openai_bpe(path: str | Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of OpenAI's BPE file, numbered as OpenAI's ``SimpleTokenizer`` does."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise CheckpointError(f"{path}: not a readable gzip text file of BPE merges: {exc}") from None
    lines = text.split("\n")
    if "#version" not in lines[0]:
        raise CheckpointError(
            f"{path}: the first line should be the BPE header (like '\"bpe_simple_vocab_16e6.txt#version: 0.2'), "
            f"found {lines[0][:60]!r}")
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(body[:OPENAI_BPE_MERGES], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{path}: line {number} is not a merge of two symbols: {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT]
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in vocab:
            raise CheckpointError(f"{path}: token {token!r} occurs twice in the vocabulary (duplicate merge?)")
        vocab[token] = index
    for number, (first, second) in enumerate(merges, start=2):
        if first not in vocab or second not in vocab:
            raise CheckpointError(f"{path}: line {number} merges a symbol that is not in the vocabulary")
    return vocab, merges


def tokenizer_from_openai_bpe(path: str | Path):
    """A ``transformers.CLIPTokenizer`` equivalent to OpenAI's tokenizer for ``path``."""
    from transformers import CLIPTokenizer

    vocab, merges = read_openai_bpe(path)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.name_or_path = str(path)
    return tokenizer


# --------------------------------------------------------------------------------------------
# encoding prompts for a given text tower


def end_of_text_id(tokenizer, text_config, source: str) -> int:
    """The token id at which ``text_config``'s tower pools, after checking that the tokenizer
    fits that tower (same vocabulary size, same end-of-text token)."""
    size, vocab_size = len(tokenizer), text_config.vocab_size
    if size != vocab_size:
        hint = " (it has no vocabulary: wrong folder, or a Hub id not in the cache?)" if size <= 3 else ""
        raise CheckpointError(
            f"tokenizer {source}: {size} tokens, but the CLIP text tower has a vocabulary of "
            f"{vocab_size}{hint}; give the tokenizer that belongs to these CLIP weights")
    eos = tokenizer.eos_token_id
    expected = text_config.eos_token_id
    if expected == 2:  # configs written before transformers PR #24773: pooled at the largest id
        expected = vocab_size - 1
    if eos is None or eos != expected:
        raise CheckpointError(
            f"tokenizer {source}: its end-of-text token has id {eos}, but the CLIP text tower pools "
            f"at id {expected}; give the tokenizer that belongs to these CLIP weights")
    return eos


def encode_prompts(tokenizer, prompts: list[str], text_config, source: str) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``prompts`` for the text tower of ``text_config``.

    Prompts longer than the tower's context are truncated with a warning naming them. Raises
    :class:`CheckpointError` naming ``source`` when the tokenizer does not fit the tower or a
    prompt does not end with (or contains an early) end-of-text token.
    """
    eos = end_of_text_id(tokenizer, text_config, source)
    context = text_config.max_position_embeddings
    for prompt, ids in zip(prompts, tokenizer(prompts, verbose=False)["input_ids"]):
        if len(ids) > context:
            shown = repr(prompt) if len(prompt) <= 120 else repr(prompt[:117] + "...")
            warnings.warn(
                f"prompt {shown} is {len(ids)} tokens long, more than the CLIP text context of "
                f"{context}: truncated to {context} tokens (start, its first {context - 2}, end of text)",
                stacklevel=3)
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=context, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    last = (positions * mask).argmax(dim=1)  # the last attended position of each row
    first_eos = (ids == eos).int().argmax(dim=1)
    rows = torch.arange(ids.shape[0])
    not_ending = [p for p, ok in zip(prompts, (ids[rows, last] == eos).tolist()) if not ok]
    early = [p for p, ok in zip(prompts, (first_eos == last).tolist()) if not ok and p not in not_ending]
    if not_ending:
        raise CheckpointError(
            f"tokenizer {source}: encoded prompts do not end with the end-of-text token {eos}: "
            + ", ".join(repr(p) for p in not_ending[:5]))
    if early:
        raise CheckpointError(
            f"tokenizer {source}: prompts encode to an end-of-text token before their end (unknown "
            "characters mapped to it?), so the text tower would pool too early: "
            + ", ".join(repr(p) for p in early[:5]))
    return {"input_ids": ids, "attention_mask": mask}
