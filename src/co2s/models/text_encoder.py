"""The CLIP tokenizer, loaded offline from a folder or the local Hugging Face cache."""

from __future__ import annotations

from co2s.errors import CheckpointError


def load_tokenizer(source: str):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load a CLIP tokenizer from {source!r} (a folder with vocab.json and merges.txt, "
            f"or a Hub id already in the local cache): {exc}"
        ) from None
