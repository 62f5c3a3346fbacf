"""Hugging Face Hub ids: downloaded on first use into the Hugging Face cache, found there after.

:func:`hub_snapshot` is the one place where a Hub ``source`` (``owner/name``, or
``owner/name@revision`` with a branch, tag or commit) becomes a local folder, for backbone weights
(:mod:`.dispatch`) and for the CLIP tokenizer (:mod:`co2s.models.text_encoder`):

* the repository's file list (``HfApi().model_info``) says which files are needed
  (:func:`needed_files`, the only place that decides): ``config.json`` and the weights in one
  format, ``model.safetensors`` (single, or sharded with its index) where the repository has it,
  else ``pytorch_model.bin`` (or its shards); for a tokenizer its vocabulary files. Nothing else
  is fetched (no ONNX, Flax or TensorFlow files, no second weight format);
* ``huggingface_hub.snapshot_download`` fetches those files into the cache (``cache_dir``, else
  ``HF_HUB_CACHE`` / ``HF_HOME``), with its own progress bar, the token of ``HF_TOKEN`` or
  ``hf auth login``, and its resumable HTTP transfer. Files already there are not fetched again
  (online, a cache hit costs the two small requests that say which commit the branch is); the
  branch or tag is recorded in the cache's ``refs/`` for offline use;
* offline (``HF_HUB_OFFLINE=1``), or when the Hub cannot be reached, the cache alone answers
  (``snapshot_download(..., local_files_only=True)``), checked against the file list cached by
  the download when there is one;
* every failure is one :class:`~co2s.errors.CheckpointError` line naming the repository: gated
  (where to ask for access, ``HF_TOKEN``; for DINOv3 also Meta's ``.pth`` files), repository or
  revision not found, not in the cache with no network (how to pre-download), a download that
  stopped.

The commit the files came from is returned (:class:`HubSnapshot`), so that a run records which
revision it used.
"""

from __future__ import annotations

import glob
import importlib
import re
from pathlib import Path
from typing import Literal, NamedTuple

from co2s.errors import CheckpointError

Purpose = Literal["model", "tokenizer"]

#: ``owner/name`` optionally followed by ``@revision`` (branch, tag, commit; ``refs/pr/1``)
HUB_SOURCE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.-]+(?:/[\w.-]+)*))?$")

#: the files of a CLIP tokenizer on the Hub (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

#: weight formats in order of preference: (single file, index of shards, shard names)
_WEIGHT_FORMATS = (
    ("model.safetensors", "model.safetensors.index.json", re.compile(r"model-\d+-of-\d+\.safetensors")),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", re.compile(r"pytorch_model-\d+-of-\d+\.bin")),
)

_HUB_PAGE = "https://huggingface.co"  # where access to a gated repository is requested


class HubSnapshot(NamedTuple):
    """The cache folder holding a Hub repository's files at ``revision`` (the commit sha)."""

    path: Path
    repo_id: str
    revision: str


def parse_hub_source(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``owner/name[@revision]``; None when ``text`` is not of that form."""
    match = HUB_SOURCE.match(text)
    return None if match is None else (match["repo"], match["revision"])


def needed_files(repo_id: str, files: list[str], purpose: Purpose) -> list[str]:
    """The files of the repository listing ``files`` that a ``purpose`` load reads."""
    names = set(files)
    if purpose == "tokenizer":
        if not ({"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names):
            raise CheckpointError(f"{repo_id}: the repository holds no tokenizer files (vocab.json and merges.txt, "
                                  "or tokenizer.json)")
        return [f for f in TOKENIZER_FILES if f in names]
    if "config.json" not in names:
        raise CheckpointError(f"{repo_id}: the repository holds no config.json; not a transformers model")
    for single, index, shard in _WEIGHT_FORMATS:
        if single in names:
            return ["config.json", single]
        shards = sorted(f for f in names if shard.fullmatch(f))
        if index in names and shards:
            return ["config.json", index, *shards]
    raise CheckpointError(f"{repo_id}: the repository holds no model.safetensors or pytorch_model.bin "
                          "(single or sharded)")


def hub_snapshot(source: str, cache_dir: str | Path | None, purpose: Purpose) -> HubSnapshot:
    """The local folder of the files ``purpose`` needs from the Hub ``source``, downloaded on first
    use (see the module docstring). Raises :class:`CheckpointError`."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    parsed = parse_hub_source(source)
    if parsed is None:
        raise CheckpointError(f"{source}: not a Hub id (owner/name, optionally @revision)")
    repo_id, revision = parsed
    cache = str(Path(cache_dir).expanduser()) if cache_dir is not None else None
    where = cache or constants.HF_HUB_CACHE
    if constants.is_offline_mode():
        return _from_cache(source, repo_id, revision, cache, where, purpose, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except HFValidationError as exc:
        raise CheckpointError(f"{source}: not a valid Hub id: {_first_line(exc)}") from None
    except RevisionNotFoundError:
        raise CheckpointError(_revision_message(repo_id, revision)) from None
    except RepositoryNotFoundError as exc:  # also gated, private: a copy in the cache still serves
        try:
            return _from_cache(source, repo_id, revision, cache, where, purpose, "")
        except CheckpointError:
            raise CheckpointError(_refusal_message(repo_id, exc, purpose)) from None
    except (HfHubHTTPError, OfflineModeIsEnabled, *_transport_errors()) as exc:
        return _from_cache(source, repo_id, revision, cache, where, purpose, _unreachable(exc))

    wanted = needed_files(repo_id, [s.rfilename for s in info.siblings or ()], purpose)
    try:  # files already in the cache are not fetched again; a branch or tag is recorded in refs/
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                        allow_patterns=[glob.escape(f) for f in wanted]))
    except RevisionNotFoundError:
        raise CheckpointError(_revision_message(repo_id, revision)) from None
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        raise CheckpointError(_refusal_message(repo_id, exc, purpose)) from None
    except FileNotFoundError as exc:  # LocalEntryNotFoundError: the Hub went away during the download
        cause = exc.__cause__ or exc
        raise CheckpointError(_not_cached_message(source, repo_id, revision, where, purpose,
                                                  _unreachable(cause))) from None
    except (OSError, *_transport_errors()) as exc:  # a transfer that stopped, a full disk
        raise CheckpointError(
            f"{source}: the download stopped ({type(exc).__name__}: {_first_line(exc)}); files already "
            f"complete stay in {where}: run again to fetch the rest") from None
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:  # the branch moved on between the file list and the download
        raise CheckpointError(f"{source}: {', '.join(missing)} missing after the download to {folder} (the "
                              "repository changed meanwhile?); run again, or pin a commit (id@revision)")
    return HubSnapshot(folder, repo_id, folder.name)


def _from_cache(source: str, repo_id: str, revision: str | None, cache: str | None, where: str,
                purpose: Purpose, reason: str) -> HubSnapshot:
    """The snapshot already in the cache, with no network access; the file list cached by the
    download (when there is one) says which files must be there."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    def not_cached() -> CheckpointError:
        return CheckpointError(_not_cached_message(source, repo_id, revision, where, purpose, reason))

    try:
        listing = [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache)]
    except CachedRepoTreeNotFoundError:
        listing = None  # a cache written by other tools: what is on disk must do
    wanted = None if listing is None else needed_files(repo_id, listing, purpose)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True,
                                        allow_patterns=None if wanted is None else [glob.escape(f) for f in wanted]))
    except OSError:  # LocalEntryNotFoundError, IncompleteSnapshotError
        raise not_cached() from None
    if wanted is None:
        on_disk = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        try:
            wanted = needed_files(repo_id, on_disk, purpose)
        except CheckpointError:
            raise not_cached() from None
    if not all((folder / f).is_file() for f in wanted):
        raise not_cached()
    return HubSnapshot(folder, repo_id, folder.name)


def _not_cached_message(source: str, repo_id: str, revision: str | None, where: str, purpose: Purpose,
                        reason: str) -> str:
    what = "its tokenizer files are" if purpose == "tokenizer" else "it is"
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    return (f"{source}: {what} not in the Hugging Face cache ({where}), and nothing is downloaded: {reason}; "
            f"pre-download it on a machine with network (`{fetch}`), then copy that cache folder here or set "
            "HF_HUB_CACHE to it, or give a local folder or file instead")


def _refusal_message(repo_id: str, exc: Exception, purpose: Purpose) -> str:
    """Gated (access not granted, or no token sent) or not found (or private)."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import GatedRepoError

    if isinstance(exc, GatedRepoError):
        page = f"{_HUB_PAGE}/{repo_id}"
        if get_token():
            text = (f"{repo_id}: gated repository, and the token in use (HF_TOKEN, or `hf auth login`) has no "
                    f"access to it yet: request access at {page} with that account and wait for approval")
        else:
            text = (f"{repo_id}: gated repository: request access at {page} (logged in), then set HF_TOKEN to an "
                    "access token of that account (or run `hf auth login`)")
        if purpose == "model" and "dinov3" in repo_id.lower():
            text += ("; or give Meta's .pth file instead (backbone.weights: "
                     "/path/to/dinov3_vitb16_pretrain_lvd1689m-*.pth; docs/weights.md)")
        return text
    return (f"{repo_id}: no such repository on the Hub ({constants.ENDPOINT}), or a private one: check the id, or "
            "set HF_TOKEN (or run `hf auth login`) to a token that can read it; a local folder or file is given "
            "by its path")


def _revision_message(repo_id: str, revision: str | None) -> str:
    return (f"{repo_id}: revision {revision or 'main'!r} not found in the repository (a branch, tag or commit "
            f"of {_HUB_PAGE}/{repo_id})")


def _unreachable(exc: BaseException) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"the Hub ({constants.ENDPOINT}) answered HTTP {exc.response.status_code}"
    detail = _first_line(exc)
    return f"the Hub ({constants.ENDPOINT}) cannot be reached ({type(exc).__name__}{': ' + detail if detail else ''})"


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network errors (huggingface_hub 2 uses httpx2, 1.x httpx)."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)
