"""The one entry point, :func:`load_backbone_weights`: which loader a ``source`` goes to.

* a directory written by ``save_pretrained`` (``config.json`` + ``model.safetensors``, sharded or
  not, or ``pytorch_model.bin``): :mod:`.hf_folders`;
* a Hugging Face Hub id, ``owner/name`` or ``owner/name@revision``: downloaded into the Hugging
  Face cache on first use, found there after (offline too) by :func:`~.hub.hub_snapshot`, then
  loaded as a save_pretrained folder; the family records the repository and commit
  (``origin``);
* a single DINOv3 file as Meta distributes it (``dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth``):
  a ``torch.save``\\ d state dict of the ``dinov3`` repository's ``DinoVisionTransformer``, mapped key
  by key by :func:`~.dinov3_official.convert_dinov3_official`;
* a single OpenAI CLIP file (``ViT-B-16.pt``), mapped by :func:`~.openai_clip.convert_openai_clip`.

A single file is read by :func:`~.readers.read_state_dict`, converted, loaded into a freshly built
transformers model and verified against the converted tensors. What the tensors cannot tell (the
weight family, hence heads, activation and input normalisation) is decided by
:func:`co2s.models.families.resolve` from the file name or Hub id, the shape and the student's
own settings, and returned with the model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal, NamedTuple

from torch import Tensor
from transformers import CLIPModel, DINOv3ViTModel, PreTrainedModel

from co2s.errors import CheckpointError
from co2s.models.backbones.weights.dinov3_official import convert_dinov3_official
from co2s.models.backbones.weights.hf_folders import HF_MODELS, hf_config, load_hf_directory
from co2s.models.backbones.weights.hub import hub_snapshot, parse_hub_source
from co2s.models.backbones.weights.openai_clip import convert_openai_clip, openai_clip_shape
from co2s.models.families import Overrides, Resolved, resolve
from co2s.models.backbones.weights.readers import read_state_dict
from co2s.models.backbones.weights.verify import check_keys_and_shapes, verify_weights

Kind = Literal["clip", "dinov3", "dinov2"]

_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl")


class LoadedWeights(NamedTuple):
    """A pretrained backbone: the transformers ``model`` (eval mode, float32), the ``reference``
    tensors it must hold (:func:`verify_weights`) and what its family decided (``family``)."""

    model: PreTrainedModel
    reference: dict[str, Tensor]
    family: Resolved


def load_backbone_weights(
    kind: Kind, source: str | Path, *, overrides: Overrides | None = None, cache_dir: str | Path | None = None,
    text_only: bool = False,
) -> LoadedWeights:
    """Load a ``kind`` backbone from ``source``.

    ``source`` is a ``save_pretrained`` directory, a Hub id (``owner/name[@revision]``, downloaded
    on first use into the Hugging Face cache; ``cache_dir`` overrides the default one; the
    family's ``origin`` records the commit), or a single official file (DINOv3 ``.pth``, a CLIP
    ``.pt`` in OpenAI's names, an open_clip training checkpoint; also those tensors as
    ``.safetensors``). ``overrides``: the student's ``backbone.family/heads/act/mean/std/
    rope_periods``; ``text_only``: only a CLIP's text tower will be used (text prototypes), so
    weights no family describes need no input normalisation. The model is a ``CLIPModel`` for
    ``clip`` (vision tower, ``visual_projection``, text tower and ``text_projection``). Raises :class:`CheckpointError` or
    :class:`~co2s.errors.ConfigError` naming the file and the problem.
    """
    overrides = overrides or Overrides()
    if kind not in HF_MODELS:
        raise CheckpointError(f"unknown backbone kind {kind!r}; expected one of {sorted(HF_MODELS)}")
    path = Path(source).expanduser()
    needs = () if text_only else ("mean", "std")
    if path.is_dir():
        return _load_directory(kind, path, str(source), overrides, needs)
    if path.is_file():
        return _load_single_file(kind, path, overrides, needs)
    text = str(source)
    if is_hub_source(text):
        snapshot = hub_snapshot(text, cache_dir, "model")
        loaded = _load_directory(kind, snapshot.path, text, overrides, needs)
        origin = {"hub": snapshot.repo_id, "revision": snapshot.revision}
        return loaded._replace(family=replace(loaded.family, origin=origin))
    raise CheckpointError(f"{source}: no such file or directory")


def is_hub_source(source: str | Path) -> bool:
    """Whether a weights ``source`` is read as a Hub id: ``owner/name[@revision]`` that is not a
    path on disk, does not start like one and does not end like a weight file."""
    text = str(source)
    hub = parse_hub_source(text)
    return (hub is not None and not Path(text).expanduser().exists() and not text.startswith((".", "/", "~"))
            and Path(hub[0]).suffix not in _FILE_SUFFIXES)


def fetch_hub_weights(sources: list[str], cache_dir: str | Path | None = None) -> None:
    """Download (or find in the cache) the files of every Hub id among ``sources``, so a missing or
    unreachable id stops a run at once, before its data are checked; the loads that follow find
    the files in the cache. Other sources are left to :func:`load_backbone_weights`."""
    for source in dict.fromkeys(str(s) for s in sources):
        if is_hub_source(source):
            hub_snapshot(source, cache_dir, "model")


def _load_directory(kind: str, directory: Path, label: str, overrides: Overrides,
                    needs: tuple[str, ...]) -> LoadedWeights:
    """A save_pretrained folder: its config.json says heads and activation; the family (matched on
    the folder or Hub id) says the normalisation and checks them."""
    hf_config(kind, directory, label)  # the folder is a save_pretrained one of this kind
    try:  # the full config, defaults included (config.json may hold only what differs from them)
        config = HF_MODELS[kind][0].config_class.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types
        raise CheckpointError(f"{label}: unreadable config.json: {exc}") from None
    vision = config.vision_config if kind == "clip" else config
    shape = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size)
    heads, act = vision.num_attention_heads, vision.hidden_act
    if overrides.heads is not None and overrides.vision_heads != heads:
        raise CheckpointError(f"{label}: backbone.heads {overrides.heads}, but its config.json says {heads}")
    where = f"{label} ({directory})" if label != str(directory) else label
    family = resolve(kind, where, shape, overrides, needs, file_heads=heads, file_act=act)
    model, reference = load_hf_directory(kind, directory, label, act=family.act if family.act != act else None)
    return LoadedWeights(model, reference, family)


def _load_single_file(kind: str, path: Path, overrides: Overrides, needs: tuple[str, ...]) -> LoadedWeights:
    if kind == "dinov2":
        raise CheckpointError(
            f"{path}: single-file DINOv2 checkpoints are not supported; give a save_pretrained "
            "directory or a Hub id (e.g. facebook/dinov2-base)"
        )
    state = read_state_dict(path)
    try:
        if kind == "dinov3":
            config, converted = convert_dinov3_official(state)
            shape = (config.hidden_size, config.num_hidden_layers, config.patch_size)
            family = resolve(kind, str(path), shape, overrides, needs, file_heads=config.num_attention_heads)
            if overrides.rope_periods == "stored":
                # Meta's code uses the file's own (bf16-rounded) periods; kept in the config so a
                # checkpoint of the student rebuilds them (co2s.models.backbones.dino).
                config.rope_periods = [float(v) for v in state["rope_embed.periods"].float()]
            model_cls: type[PreTrainedModel] = DINOv3ViTModel
        else:
            shape = openai_clip_shape(state)
            if not all(shape):  # not OpenAI's layout: the converter names what is missing
                convert_openai_clip(state, 1, 1, "quick_gelu")
            family = resolve(kind, str(path), shape, overrides, ("heads", "act", *needs))
            vision_heads, text_heads = ((family.variant.heads, family.variant.text_heads)
                                        if overrides.heads is None else (overrides.vision_heads, overrides.text_heads))
            config, converted = convert_openai_clip(state, vision_heads, text_heads, family.act)
            model_cls = CLIPModel
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = model_cls(config)
    model.eval()
    expected = model.state_dict()
    reference = {k: v.to(expected[k].dtype) if k in expected else v for k, v in converted.items()}
    check_keys_and_shapes(expected, reference, str(path))
    model.load_state_dict(reference, strict=True)
    verify_weights(model, reference, str(path))
    return LoadedWeights(model, reference, family)
