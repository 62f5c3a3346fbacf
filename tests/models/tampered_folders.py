"""The tampered-folder corpus: model folders written by ``co2s export`` of tiny models, each damaged
in one way a file from elsewhere can be (wrong JSON types, absurd sizes, NaN, fields that disagree
with each other or with the weights; a truncated, NaN, int32 or incomplete ``model.safetensors``),
driven through ``co2s predict``.

Run as ``python -m tests.models.tampered_folders WORKDIR`` (from the repository root): it builds
the folders, then caps its own address space at what it uses plus 1 GiB, so a refusal that
allocates first fails with a MemoryError instead of passing, runs every case and prints one JSON
list of results (exit code, stderr, CPU seconds, whether the folder changed). The test
(``test_tampered_folders.py``) asserts on them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import resource
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CONFIG, WEIGHTS = "co2s_model.json", "model.safetensors"
HEADROOM = 1 << 30  # bytes of address space beyond what the process holds once the folders are built


@dataclass(frozen=True)
class Case:
    name: str
    base: str  # pair (a CLIP and a CNN student), lite (lite_unet), dino (a DINOv3 and a DINOv2 student)
    tamper: Callable[[Path], None]
    names: str  # the file the error must name: json, weights, folder; "ok" for controls (exit 0)
    needle: str  # a fragment of the reason the error line must give


# -- tampering ------------------------------------------------------------------------------------
def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / CONFIG
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))  # Python's json writes NaN / Infinity as the world does
    return tamper


def edit_text(change: Callable[[str], str]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / CONFIG
        path.write_text(change(path.read_text()))
    return tamper


def edit_config_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / CONFIG
        path.write_bytes(change(path.read_bytes()))
    return tamper


def in_turn(*tampers: Callable[[Path], None]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        for t in tampers:
            t(folder)
    return tamper


def edit_weights(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = folder / WEIGHTS
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path), metadata=metadata)
    return tamper


def edit_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / WEIGHTS
        path.write_bytes(change(path.read_bytes()))
    return tamper


def edit_header(change: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    """A change to the safetensors JSON header, the data left as it is."""
    def bytes_change(data: bytes) -> bytes:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        change(header)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data[8 + size:]
    return bytes_change


def contract(**fields) -> Callable[[dict], None]:
    return lambda r: r["contract"].update(fields)


def at(*path: str, **fields) -> Callable[[dict], None]:
    """Update the mapping at ``contract.<path>`` with ``fields``."""
    def change(record: dict) -> None:
        target = record["contract"]
        for key in path:
            target = target[key]
        target.update(fields)
    return change


def clip_vision(**fields):
    return at("architectures", "clip", "backbone", "arch", "vision_config", **fields)


def clip_text(**fields):
    return at("architectures", "clip", "backbone", "arch", "text_config", **fields)


def cnn_arch(**fields):
    return at("architectures", "cnn", "backbone", "arch", **fields)


def add_class(record: dict) -> None:
    """A fourth class, with its colour: the JSON agrees with itself, not with the weights' heads."""
    c = record["contract"]
    c["classes"].append("c3")
    c["palette"].append([1, 2, 3])


def four_bands(record: dict) -> None:
    """in_channels 4 with a mean and std per band: consistent JSON, three-band first conv."""
    c = record["contract"]
    c["in_channels"] = 4
    for norm in c["normalisation"].values():
        norm["mean"].append(0.5)
        norm["std"].append(0.25)


def third_model(record: dict) -> None:
    c = record["contract"]
    c["architectures"]["cnn2"] = c["architectures"]["cnn"]
    c["normalisation"]["cnn2"] = c["normalisation"]["cnn"]


def nested(record: dict) -> None:
    record["training_config"] = "@NEST@"


def set_tensor(key: str, value: Callable) -> Callable[[dict], None]:
    def change(tensors):
        tensors[key] = value(tensors[key])
    return change


def drop_prefix(prefix: str) -> Callable[[dict], None]:
    def change(tensors):
        for key in [k for k in tensors if k.startswith(prefix)]:
            del tensors[key]
    return change


def replace_with_dir(folder: Path) -> None:
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).mkdir()
    (folder / WEIGHTS / "part0").write_bytes(b"\0" * 16)


def config_dir(folder: Path) -> None:
    (folder / CONFIG).unlink()
    (folder / CONFIG).mkdir()


def link_dev_zero(folder: Path) -> None:
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).symlink_to("/dev/zero")


def nothing(folder: Path) -> None:
    pass


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _inf(t):
    t = t.clone()
    t.view(-1)[-1] = float("inf")
    return t


def _int32(t):
    import torch

    return t.round().to(torch.int32)


NAN = float("nan")
CLIP_W = "clip.backbone.vision.encoder.layers.0.mlp.fc1.weight"
CNN_W = "cnn.backbone.stem.0.weight"

CASES: list[Case] = [
    # controls: the untouched folders predict under the same memory cap
    Case("control-pair", "pair", nothing, "ok", ""),
    Case("control-lite", "lite", nothing, "ok", ""),
    Case("control-dino", "dino", nothing, "ok", ""),
    Case("control-reformatted-json", "pair", edit_json(lambda r: None), "ok", ""),
    # the record itself
    Case("format-version-string", "pair", edit_json(lambda r: r.update(format_version="1")), "json", "format_version"),
    Case("format-version-bool", "pair", edit_json(lambda r: r.update(format_version=True)), "json", "format_version"),
    Case("format-version-zero", "pair", edit_json(lambda r: r.update(format_version=0)), "json", "format_version"),
    Case("format-version-newer", "pair", edit_json(lambda r: r.update(format_version=99)), "folder", "newer co2s"),
    Case("format-foreign", "pair", edit_json(lambda r: r.update(format="onnx")), "json", "not a co2s model config"),
    Case("record-a-list", "pair", edit_text(lambda t: "[1, 2]"), "json", "not a co2s model config"),
    Case("json-truncated", "pair", edit_text(lambda t: t[: len(t) // 2]), "json", "unreadable"),
    # a key given twice (hand-edited): JSON readers keep the last one, silently dropping the first
    Case("json-repeated-key", "pair", edit_text(lambda t: t.replace("{", '{"step": 7, ', 1)), "json", "given twice"),
    Case("json-not-utf8", "pair", edit_config_bytes(lambda b: b.replace(b'"c0"', b'"c\xff0"', 1)), "json",
         "unreadable"),
    Case("json-nested-100k", "pair", in_turn(edit_json(nested), edit_text(lambda t: t.replace(
        '"@NEST@"', "[" * 100_000 + "]" * 100_000))), "json", "unreadable"),
    Case("json-17-MiB", "pair", edit_json(lambda r: r.update(training_config={"pad": "x" * (17 << 20)})),
         "json", "bytes"),
    Case("models-field-in-format-2", "pair", edit_json(lambda r: r.update(models=5)), "json", "unknown field"),
    Case("step-a-string", "pair", edit_json(lambda r: r.update(step="ten")), "json", "step"),
    Case("step-negative", "pair", edit_json(lambda r: r.update(step=-1)), "json", "step"),
    Case("training-config-a-number", "pair", edit_json(lambda r: r.update(training_config=5)), "json",
         "training_config"),
    Case("contract-missing", "pair", edit_json(lambda r: r.pop("contract")), "json", "not a mapping"),
    Case("contract-version-string", "pair", edit_json(contract(version="1")), "json", "version"),
    Case("contract-version-newer", "pair", edit_json(contract(version=99)), "json", "newer"),
    Case("contract-unknown-field", "pair", edit_json(contract(colours=[1])), "json", "colours"),
    # classes, palette, bands, scale
    Case("classes-a-million", "pair", edit_json(contract(classes=[f"c{i}" for i in range(10**6)])), "json", "classes"),
    Case("classes-a-million-duplicates", "pair", edit_json(contract(classes=["a"] * 10**6)), "json", "classes"),
    Case("classes-duplicate", "pair", edit_json(contract(classes=["c0", "c0", "c1"])), "json", "twice"),
    Case("classes-empty", "pair", edit_json(contract(classes=[])), "json", "classes"),
    Case("classes-numbers", "pair", edit_json(contract(classes=[1, 2, 3])), "json", "classes"),
    Case("classes-one-more", "pair", edit_json(add_class), "weights", "shape"),
    Case("palette-channel-300", "pair", edit_json(contract(palette=[[300, 0, 0], [0, 0, 0], [1, 1, 1]])), "json",
         "palette"),
    Case("palette-too-short", "pair", edit_json(contract(palette=[[0, 0, 0]])), "json", "palette"),
    Case("bands-two-for-three", "pair", edit_json(contract(bands=[1, 2])), "json", "bands"),
    Case("bands-strings", "pair", edit_json(contract(bands=["1", "2", "3"])), "json", "bands"),
    Case("bands-zero", "pair", edit_json(contract(bands=[0, 1, 2])), "json", "bands"),
    Case("scale-nan", "pair", edit_json(contract(scale=NAN)), "json", "scale"),
    Case("scale-negative", "pair", edit_json(contract(scale=-1.0)), "json", "scale"),
    Case("scale-word", "pair", edit_json(contract(scale="big")), "json", "scale"),
    # in_channels and normalisation
    Case("in-channels-1e6", "pair", edit_json(contract(in_channels=1e6)), "json", "in_channels"),
    Case("in-channels-100000", "pair", edit_json(contract(in_channels=100000)), "json", "in_channels"),
    Case("in-channels-4-norm-3", "pair", edit_json(contract(in_channels=4)), "json", "normalisation"),
    Case("in-channels-4-cnn-arch-3", "pair", edit_json(four_bands), "json", "in_channels"),
    Case("in-channels-4-first-conv-3", "lite", edit_json(four_bands), "weights", "shape"),
    Case("std-zero", "pair", edit_json(at("normalisation", "cnn", std=[0.0, 0.0, 0.0])), "json", "std"),
    Case("std-negative", "pair", edit_json(at("normalisation", "cnn", std=[-0.2, 0.2, 0.2])), "json", "std"),
    Case("mean-nan", "pair", edit_json(at("normalisation", "cnn", mean=[NAN, 0.4, 0.4])), "json", "mean"),
    Case("mean-disagrees-with-buffer", "pair", edit_json(at("normalisation", "cnn", mean=[0.5, 0.5, 0.5])),
         "json", "disagrees with the weights"),
    Case("normalisation-of-one-model", "pair", edit_json(lambda r: r["contract"]["normalisation"].pop("clip")),
         "json", "normalisation"),
    # tiling
    Case("window-1e6", "pair", edit_json(at("tiling", window=1e6)), "json", "window"),
    Case("window-a-million", "pair", edit_json(at("tiling", window=10**6)), "json", "window"),
    Case("window-a-million-stride-too", "pair", edit_json(at("tiling", window=10**6, stride=10**6)), "json", "window"),
    Case("window-string", "pair", edit_json(at("tiling", window="32")), "json", "window"),
    Case("window-2", "pair", edit_json(at("tiling", window=2, stride=2)), "json", "window"),
    Case("stride-1", "pair", edit_json(at("tiling", stride=1)), "json", "stride"),
    Case("stride-0", "pair", edit_json(at("tiling", stride=0)), "json", "stride"),
    Case("stride-beyond-window", "pair", edit_json(at("tiling", stride=64)), "json", "stride"),
    Case("batch-a-billion", "pair", edit_json(at("tiling", batch_size=10**9)), "json", "batch_size"),
    Case("batch-zero", "pair", edit_json(at("tiling", batch_size=0)), "json", "batch_size"),
    # prediction and the models
    Case("prediction-median", "pair", edit_json(contract(prediction="median")), "json", "prediction"),
    Case("prediction-a-number", "pair", edit_json(contract(prediction=5)), "json", "prediction"),
    Case("architectures-empty", "pair", edit_json(contract(architectures={}, normalisation={})), "json",
         "architectures"),
    Case("architectures-three", "pair", edit_json(third_model), "json", "architectures"),
    Case("architectures-not-a-mapping", "pair", edit_json(contract(architectures=5)), "json", "architectures"),
    Case("model-name-dotted", "pair", edit_json(lambda r: [r["contract"][k].update({"a.b": r["contract"][k].pop("cnn")})
                                                           for k in ("architectures", "normalisation")]),
         "json", "identifiers"),
    Case("model-kind-unknown", "pair", edit_json(at("architectures", "cnn", kind="transformer")), "json", "kind"),
    Case("model-record-a-string", "pair", edit_json(lambda r: r["contract"]["architectures"].update(cnn="cnn")),
         "json", "architectures"),
    # the CLIP student's transformers config
    Case("clip-hidden-1e6", "pair", edit_json(clip_vision(hidden_size=1e6)), "json", "hidden_size"),
    Case("clip-hidden-a-million", "pair", edit_json(clip_vision(hidden_size=10**6)), "json", "hidden_size"),
    Case("clip-layers-1e5", "pair", edit_json(clip_vision(num_hidden_layers=10**5)), "json", "num_hidden_layers"),
    Case("clip-layers-bool", "pair", edit_json(clip_vision(num_hidden_layers=True)), "json", "num_hidden_layers"),
    Case("clip-heads-not-dividing", "pair", edit_json(clip_vision(num_attention_heads=3)), "json",
         "num_attention_heads"),
    Case("clip-heads-a-thousand", "pair", edit_json(clip_vision(num_attention_heads=1024, hidden_size=1024)),
         "json", "num_attention_heads"),
    Case("clip-mlp-1e8", "pair", edit_json(clip_vision(intermediate_size=10**8)), "json", "intermediate_size"),
    Case("clip-patch-1", "pair", edit_json(clip_vision(patch_size=1)), "json", "patch_size"),
    Case("clip-image-size-a-million", "pair", edit_json(clip_vision(image_size=10**6)), "json", "image_size"),
    Case("clip-image-below-patch", "pair", edit_json(clip_vision(image_size=8, patch_size=16)), "json", "image_size"),
    Case("clip-channels-7", "pair", edit_json(clip_vision(num_channels=7)), "json", "num_channels"),
    Case("clip-act-unknown", "pair", edit_json(clip_vision(hidden_act="rm -rf")), "json", "hidden_act"),
    Case("clip-eps-nan", "pair", edit_json(clip_vision(layer_norm_eps=NAN)), "json", "layer_norm_eps"),
    Case("clip-vocab-a-billion", "pair", edit_json(clip_text(vocab_size=10**9)), "json", "vocab_size"),
    Case("clip-text-positions-1e7", "pair", edit_json(clip_text(max_position_embeddings=10**7)), "json",
         "max_position_embeddings"),
    Case("clip-projection-a-million", "pair", edit_json(at("architectures", "clip", "backbone", "arch",
                                                           projection_dim=10**6)), "json", "projection_dim"),
    Case("clip-vision-config-a-string", "pair", edit_json(at("architectures", "clip", "backbone", "arch",
                                                             vision_config="big")), "json", "vision_config"),
    Case("clip-arch-a-name", "pair", edit_json(at("architectures", "clip", "backbone", arch="vit-b16")), "json",
         "arch"),
    Case("clip-hidden-64-weights-32", "pair", edit_json(clip_vision(hidden_size=64)), "weights", "shape"),
    Case("clip-depth-3-weights-2", "pair", edit_json(clip_vision(num_hidden_layers=3)), "weights", "missing"),
    Case("clip-layers-beyond-depth", "pair", edit_json(at("architectures", "clip", "backbone", layers=[0, 99])),
         "json", "layers"),
    Case("clip-layers-a-word", "pair", edit_json(at("architectures", "clip", "backbone", layers="all")), "json",
         "layers"),
    Case("clip-skips-unknown", "pair", edit_json(at("architectures", "clip", "backbone", skips="both")), "json",
         "skips"),
    Case("clip-guidance-queries", "pair", edit_json(at("architectures", "clip", guidance="queries")), "weights",
         "clip"),
    Case("student-head-width-a-million", "pair", edit_json(at("architectures", "clip", head_width=10**6)), "json",
         "head_width"),
    Case("student-head-width-32-weights-16", "pair", edit_json(at("architectures", "clip", head_width=32)),
         "weights", "shape"),
    Case("student-head-unknown", "pair", edit_json(at("architectures", "clip", head="unet")), "json", "head"),
    Case("backbone-kind-unknown", "pair", edit_json(at("architectures", "clip", "backbone", kind="vit")), "json",
         "kind"),
    Case("backbone-weights-a-string", "pair", edit_json(at("architectures", "clip", "backbone", weights="x")),
         "json", "weights"),
    # the CNN student
    Case("cnn-widths-1e5", "pair", edit_json(cnn_arch(widths=[1e5, 16, 16])), "json", "widths"),
    Case("cnn-widths-a-million", "pair", edit_json(cnn_arch(widths=[10**6, 16, 16])), "json", "widths"),
    Case("cnn-depths-1e5", "pair", edit_json(cnn_arch(depths=[10**5, 1, 1])), "json", "depths"),
    Case("cnn-two-stages", "pair", edit_json(cnn_arch(widths=[8, 16], depths=[1, 1], strides=[2, 2])), "json",
         "widths"),
    Case("cnn-strides-3", "pair", edit_json(cnn_arch(strides=[3, 3, 3])), "json", "strides"),
    Case("cnn-stem-float", "pair", edit_json(cnn_arch(stem=8.0)), "json", "stem"),
    Case("cnn-group-size-0", "pair", edit_json(cnn_arch(group_size=0)), "json", "group_size"),
    Case("cnn-text-guidance", "pair", edit_json(at("architectures", "cnn", guidance="text")), "json", "guidance"),
    Case("cnn-stem-16-weights-8", "pair", edit_json(cnn_arch(stem=16)), "weights", "shape"),
    # lite_unet
    Case("lite-width-1e5", "lite", edit_json(at("architectures", "model", width=1e5)), "json", "width"),
    Case("lite-width-100000", "lite", edit_json(at("architectures", "model", width=100000)), "json", "width"),
    Case("lite-depth-100", "lite", edit_json(at("architectures", "model", depth=100)), "json", "depth"),
    Case("lite-width-8-weights-4", "lite", edit_json(at("architectures", "model", width=8)), "weights", "shape"),
    Case("lite-dropout-1.5", "lite", edit_json(at("architectures", "model", dropout=1.5)), "json", "dropout"),
    Case("lite-dropout-nan", "lite", edit_json(at("architectures", "model", dropout=NAN)), "json", "dropout"),
    # DINOv3 and DINOv2 students
    Case("dinov3-registers-a-million", "dino", edit_json(at("architectures", "dino3", "backbone", "arch",
                                                            num_register_tokens=10**6)), "json", "num_register_tokens"),
    Case("dinov3-rope-periods-nan", "dino", edit_json(at("architectures", "dino3", "backbone", "arch",
                                                         rope_periods=[NAN] * 4)), "json", "rope_periods"),
    Case("dinov3-rope-periods-a-million", "dino", edit_json(at("architectures", "dino3", "backbone", "arch",
                                                               rope_periods=[1.0] * 10**6)), "json", "rope_periods"),
    Case("dinov3-layers-beyond-depth", "dino", edit_json(at("architectures", "dino3", "backbone", layers=[1, 2, 99])),
         "json", "dino3"),
    Case("dinov2-mlp-ratio-1e6", "dino", edit_json(at("architectures", "dino2", "backbone", "arch", mlp_ratio=1e6)),
         "json", "mlp_ratio"),
    Case("dinov2-image-size-1e5", "dino", edit_json(at("architectures", "dino2", "backbone", "arch",
                                                       image_size=10**5)), "json", "image_size"),
    Case("dinov2-hidden-64-weights-32", "dino", edit_json(at("architectures", "dino2", "backbone", "arch",
                                                             hidden_size=64)), "weights", "shape"),
    # the weights file
    Case("weights-nan", "pair", edit_weights(set_tensor(CLIP_W, _nan)), "weights", "NaN"),
    Case("weights-inf", "pair", edit_weights(set_tensor(CNN_W, _inf)), "weights", "NaN or infinite"),
    Case("weights-nan-buffer", "lite", edit_weights(set_tensor("model.std", _nan)), "weights", "NaN"),
    Case("weights-int32", "pair", edit_weights(set_tensor(CNN_W, _int32)), "weights", "floating point"),
    Case("weights-transposed", "pair", edit_weights(set_tensor(CLIP_W, lambda t: t.t().contiguous())), "weights",
         "shape"),
    Case("weights-missing-student", "pair", edit_weights(drop_prefix("clip.")), "weights", "student 'clip' is missing"),
    Case("weights-missing-model", "lite", edit_weights(drop_prefix("model.")), "weights", "model 'model' is missing"),
    Case("weights-missing-one-tensor", "pair", edit_weights(drop_prefix(CNN_W)), "weights", "missing"),
    Case("weights-extra-tensor", "pair", edit_weights(lambda t: t.update({"cnn.extra": t[CNN_W].clone()})),
         "weights", "cnn.extra"),
    Case("weights-tensor-of-no-model", "pair", edit_weights(lambda t: t.update({"zzz.w": t[CNN_W].clone()})),
         "weights", "no model"),
    Case("weights-std-buffer-changed", "pair", edit_weights(set_tensor("cnn.std", lambda t: t * 2)), "json",
         "disagrees with the weights"),
    Case("weights-truncated", "pair", edit_bytes(lambda b: b[: len(b) - 1000]), "weights", "unreadable"),
    Case("weights-empty", "pair", edit_bytes(lambda b: b""), "weights", "unreadable"),
    Case("weights-garbage", "pair", edit_bytes(lambda b: os.urandom(4096)), "weights", "unreadable"),
    Case("weights-header-huge-shape", "pair", edit_bytes(edit_header(lambda h: h[CLIP_W].update(
        shape=[10**6, 10**6]))), "weights", "unreadable"),
    Case("weights-header-int32", "pair", edit_bytes(edit_header(lambda h: h[CNN_W].update(dtype="I32"))),
         "weights", "floating point"),
    Case("weights-a-directory", "pair", replace_with_dir, "weights", "directory"),
    Case("weights-dev-zero", "pair", link_dev_zero, "weights", "not a file"),
    Case("weights-missing", "pair", lambda f: (f / WEIGHTS).unlink(), "weights", "missing"),
    Case("config-a-directory", "pair", config_dir, "json", "not a file"),
]


# -- running -------------------------------------------------------------------------------------
def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def build_folders(work: Path) -> dict[str, Path]:
    """Model folders exported by ``co2s export`` from tiny models' checkpoints."""
    import co2s
    import torch

    from co2s.config.loader import validate
    from co2s.engine.checkpoint import write_model_checkpoint
    from co2s.models.factory import build_models
    from tests.compat.make_v1_fixtures import OUT
    from tests.conftest import tiny_config_dict, write_tiny_dataset

    folders = {
        "pair": co2s.export(OUT / "co2s_pair" / "best.ckpt", work / "base-pair")["folder"],
        "lite": co2s.export(OUT / "lite_unet" / "best.ckpt", work / "base-lite")["folder"],
    }
    data = write_tiny_dataset(work / "data", n=4, size=32)
    cfg = tiny_config_dict(data, work / "run", method="co2s")
    cfg["data"]["splits"]["unlabelled"] = "train.txt"
    small = {"base": "tiny", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 2}
    cfg["model"] = {"name": "students", "students": [
        {"name": "dino3", "backbone": {"kind": "dinov3", "arch": small}, "guidance": "queries", "head_width": 16},
        {"name": "dino2", "backbone": {"kind": "dinov2", "arch": small}, "guidance": "none",
         "head": "deeplabv3plus", "head_width": 16}]}
    torch.manual_seed(0)
    config = validate(cfg)
    ckpt = write_model_checkpoint(work / "dino.ckpt", config, build_models(config))
    folders["dino"] = co2s.export(ckpt, work / "base-dino")["folder"]
    return folders


def run_case(case: Case, base: Path, work: Path, image: Path) -> dict:
    from co2s.cli.main import main

    folder = work / case.name
    shutil.copytree(base, folder)
    case.tamper(folder)
    before = tree(folder)
    out = work / f"{case.name}.out"
    argv = ["predict", "--checkpoint", str(folder), str(image), "--out", str(out), "--no-progress"]
    stdout, stderr = io.StringIO(), io.StringIO()
    exception = None
    gc.collect()
    start = time.process_time()  # CPU time, not wall clock: the machine may be loaded
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    except BaseException as exc:  # a MemoryError, a traceback, a SystemExit: all failures
        code, exception = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    cpu = time.process_time() - start
    result = {"name": case.name, "expect": case.names, "needle": case.needle, "code": code,
              "stderr": stderr.getvalue(), "exception": exception, "cpu_s": round(cpu, 3),
              "changed": tree(folder) != before, "folder": str(folder),
              "outputs": sorted(p.name for p in out.rglob("*") if p.is_file()) if out.is_dir() else []}
    shutil.rmtree(folder, ignore_errors=True)
    return result


def address_space() -> int:
    """This process's virtual memory size (VmSize), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main(argv: list[str]) -> int:
    import torch
    from PIL import Image

    torch.set_num_threads(1)  # no thread pools (and their stacks) created after the cap
    work = Path(argv[0])
    folders = build_folders(work)
    image = work / "input.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    (work / "warm-up").mkdir()
    run_case(CASES[0], folders["pair"], work / "warm-up", image)  # every lazy import and cache before the cap
    cap = address_space() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    results = [run_case(case, folders[case.base], work, image) for case in CASES]
    print(json.dumps({"cap_bytes": cap, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
