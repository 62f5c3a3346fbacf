"""Weight families: files in each family's released format are matched to their family by name
or by shape, and get its heads, activation and normalisation; an ambiguous or unknown file is
refused with the keys to set; the student's own settings win; the model summary and model
folders say which weights a model started from.

Full-size files are written with expanded (stride-0) tensors: the real key set and shapes in a
few hundred kilobytes on disk, so the real loading code runs on a real-size file."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import CLIPConfig, CLIPModel

from co2s import Segmenter
from co2s.cli.main import main
from co2s.config.loader import load_config
from co2s.errors import ConfigError
from co2s.models.backbones.weights import load_backbone_weights
from co2s.models.backbones.weights.openai_clip import convert_openai_clip, openai_clip_shape
from co2s.models.families import (
    BY_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAT493M_MEAN,
    SAT493M_STD,
    Overrides,
    resolve,
)
from co2s.models.student_factory import build_student, student_from_architecture
from tests.conftest import tiny_config_dict, tiny_overrides
from tests.models.test_weights import (
    DIM,
    HEADS,
    OPENAI_BLOCK_KEYS,
    clip_inputs,
    dinov3_pattern_shapes,
    export_dinov3_official,
    export_openai_clip,
    image_features,
    lazy_zeros,
    official_dinov3_forward,
    official_rope_periods,
    randomise,
    text_features,
    tiny_dinov3,
)

SAT_FILE = "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"  # the name Meta's download gives


def dinov3_vitl16_state() -> dict[str, torch.Tensor]:
    """A ViT-L/16 DINOv3 state dict in Meta's names and shapes (web and SAT-493M files share them)."""
    dim = 1024
    state = {k: lazy_zeros(s) for k, s in dinov3_pattern_shapes(24, {768: dim, 2304: 3 * dim, 3072: 4 * dim}).items()}
    state["rope_embed.periods"] = official_rope_periods(dim // 16)
    mask = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    state.update({f"blocks.{i}.attn.qkv.bias_mask": mask for i in range(24)})
    return state


def openai_clip_state(width: int, depth: int, patch: int, text_width: int, text_depth: int, embed: int,
                      resolution: int = 224) -> dict[str, torch.Tensor]:
    """A CLIP ViT state dict in OpenAI's names (clip/model.py, kept by open_clip and the
    remote-sensing releases built on it) at a real size."""
    shapes = {
        "visual.class_embedding": (width,), "visual.positional_embedding": ((resolution // patch) ** 2 + 1, width),
        "visual.proj": (width, embed), "visual.conv1.weight": (width, 3, patch, patch),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
        "positional_embedding": (77, text_width), "text_projection": (text_width, embed), "logit_scale": (),
        "token_embedding.weight": (49408, text_width), "ln_final.weight": (text_width,),
        "ln_final.bias": (text_width,),
    }
    for tower, w, d in (("visual.transformer", width, depth), ("transformer", text_width, text_depth)):
        for i in range(d):
            shapes.update({f"{tower}.resblocks.{i}.{s}": f(w) for s, f in OPENAI_BLOCK_KEYS.items()})
    return {k: lazy_zeros(s) for k, s in shapes.items()}


def open_clip_training_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """open_clip's ``training/main.py`` checkpoint: the DistributedDataParallel model's state dict
    (``module.`` prefix), the optimiser's state and the AMP scaler's."""
    first = next(iter(state.values()))
    return {"epoch": 20, "name": "SkyCLIP_ViT_B32_top50pct",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {0: {"step": torch.tensor(9.0), "exp_avg": torch.zeros_like(first),
                                        "exp_avg_sq": torch.zeros_like(first)}},
                          "param_groups": [{"lr": 5e-6, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2,
                                            "params": [0]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0}}


def tiny_clip_of(width: int, heads: int, act: str) -> CLIPModel:
    """A tiny CLIP whose attention heads are not width / 64 and whose activation is ``act``."""
    config = CLIPConfig(
        text_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=heads,
                         vocab_size=50, max_position_embeddings=8, bos_token_id=48, eos_token_id=49, pad_token_id=0,
                         hidden_act=act),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
                           num_attention_heads=heads, patch_size=16, image_size=32, hidden_act=act),
        projection_dim=24,
    )
    return randomise(CLIPModel(config))


# --------------------------------------------------------------------------------------------
# DINOv3: the satellite ViT-L and the web ViT-L share every shape


@pytest.mark.parametrize("where, family, mean, std", [
    ("/w/" + SAT_FILE, "dinov3-sat493m", SAT493M_MEAN, SAT493M_STD),
    ("/w/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", "dinov3-lvd1689m", IMAGENET_MEAN, IMAGENET_STD),
    ("facebook/dinov3-vitl16-pretrain-sat493m", "dinov3-sat493m", SAT493M_MEAN, SAT493M_STD),
    ("/cache/models--facebook--dinov3-vitl16-pretrain-lvd1689m/snapshots/abc", "dinov3-lvd1689m",
     IMAGENET_MEAN, IMAGENET_STD),
])
def test_vitl16_family_and_normalisation_come_from_the_name(where, family, mean, std):
    resolved = resolve("dinov3", where, (1024, 24, 16), Overrides())
    assert resolved.family.name == family and resolved.variant.name == "ViT-L/16"
    assert (resolved.heads, resolved.act, resolved.mean, resolved.std) == (16, "gelu", mean, std)
    # the student's own mean/std win over the family's; its other values stay the family's
    own = resolve("dinov3", where, (1024, 24, 16), Overrides(mean=(0.5, 0.5, 0.5)))
    assert own.mean == (0.5, 0.5, 0.5) and own.std == std and own.sources["mean"] == "backbone"


def test_unnamed_vitl16_file_is_refused_until_its_family_is_set(tmp_path):
    path = tmp_path / "vitl16.pth"
    torch.save(dinov3_vitl16_state(), path)
    assert path.stat().st_size < 2_000_000  # expanded tensors: the real shapes, not their bytes
    with pytest.raises(ConfigError, match="set backbone.family to one of dinov3-lvd1689m, dinov3-sat493m"):
        load_backbone_weights("dinov3", path)
    resolved = resolve("dinov3", str(path), (1024, 24, 16), Overrides(family="dinov3-sat493m"))
    assert resolved.mean == SAT493M_MEAN


def test_name_and_shape_must_agree(tmp_path):
    path = tmp_path / SAT_FILE  # a released name on a tiny file: a renamed or truncated download
    torch.save(export_dinov3_official(tiny_dinov3()), path)
    with pytest.raises(ConfigError, match=r"the name says DINOv3 \(satellite, SAT-493M\) ViT-L/16 "
                                          r"\(width 1024, depth 24, patch 16\), but the weights have width 64"):
        load_backbone_weights("dinov3", path)
    with pytest.raises(ConfigError, match="none of DINOv2's architectures"):
        resolve("dinov2", "w", (64, 2, 16), Overrides(family="dinov2"))
    with pytest.raises(ConfigError, match="backbone.family 'openai' is not a dinov3 family"):
        resolve("dinov3", "w", (64, 2, 16), Overrides(family="openai"))


def test_unknown_dinov3_shape_names_the_keys_to_set(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(export_dinov3_official(tiny_dinov3()), path)
    with pytest.raises(ConfigError, match=r"width 64, depth 2, patch 16 is no known dinov3 architecture .*"
                                          r"set backbone.mean, backbone.std"):
        load_backbone_weights("dinov3", path)
    model, _, resolved = load_backbone_weights("dinov3", path, overrides=tiny_overrides("dinov3"))
    assert resolved.family is None and resolved.mean == IMAGENET_MEAN


@pytest.mark.parametrize("stored", [False, True])
def test_rope_periods_stored_follow_meta_code(tmp_path, stored):
    """backbone.rope_periods: stored keeps the file's bf16-rounded periods, as Meta's hub code
    runs them, through the student and a rebuild from its checkpoint record; exact (the default)
    recomputes them from the base as transformers does."""
    official = export_dinov3_official(tiny_dinov3(depth=3))
    path = tmp_path / "dinov3_tiny.pth"
    torch.save(official, path)
    backbone = {"kind": "dinov3", "weights": str(path), "layers": [1, 2, 3], "tune": "frozen",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "rope_periods": "stored" if stored else "exact"}
    cfg = load_config("demo", ["train.method=supervised", "model.name=students",
                               "model.students=" + repr([{"name": "dino", "backbone": backbone, "guidance": "queries"}])])
    student = build_student(cfg.model.students[0], cfg.data).eval()
    x = torch.randn(2, 3, 48, 32)
    meta = official_dinov3_forward(official, x, HEADS)  # the file's own periods
    exact = official_dinov3_forward(
        {**official, "rope_embed.periods": official_rope_periods(DIM // HEADS, dtype=torch.float64).float()}, x, HEADS)
    with torch.no_grad():
        out = student.backbone.model(x).last_hidden_state
        rebuilt = student_from_architecture(student.architecture, cfg.data.num_classes, 3)
        rebuilt.load_state_dict(student.state_dict())
        again = rebuilt.eval().backbone.model(x).last_hidden_state
    torch.testing.assert_close(out, meta if stored else exact, rtol=1e-5, atol=1e-5)
    assert (out - (exact if stored else meta)).abs().max() > 1e-4  # the two really differ here
    assert torch.equal(again, out)


# --------------------------------------------------------------------------------------------
# CLIP: OpenAI's key names, other families' heads and activations


@pytest.mark.parametrize("where, shape, family, heads, act", [
    ("/w/RS5M_ViT-H-14.pt", (1280, 32, 14, 1024, 24, 1024), "georsclip", (16, 16), "gelu"),
    ("laion/CLIP-ViT-g-14-laion2B-s34B-b88K", (1408, 40, 14, 1024, 24, 1024), "openclip-laion", (16, 16), "gelu"),
    ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", (1664, 48, 14, 1280, 32, 1280), "openclip-laion", (16, 20), "gelu"),
    ("/w/RemoteCLIP-ViT-L-14.pt", (1024, 24, 14, 768, 12, 768), "remoteclip", (16, 12), "gelu"),
    ("/w/ViT-L-14.pt", (1024, 24, 14, 768, 12, 768), "openai", (16, 12), "quick_gelu"),
])
def test_open_clip_heads_and_activation_come_from_the_family(where, shape, family, heads, act):
    """Real-size state dicts in OpenAI's names: heads from the family (ViT-H/14: 1280 / 80 = 16,
    never 1280 / 64 = 20), the converted config builds exactly the file's tensors."""
    width, depth, patch, text_width, text_depth, embed = shape
    state = openai_clip_state(width, depth, patch, text_width, text_depth, embed)
    resolved = resolve("clip", where, openai_clip_shape(state), Overrides(), ("heads", "act", "mean", "std"))
    assert resolved.family.name == family
    config, converted = convert_openai_clip(state, resolved.variant.heads, resolved.variant.text_heads, resolved.act)
    v, t = config.vision_config, config.text_config
    assert (v.num_attention_heads, t.num_attention_heads) == heads
    assert v.hidden_act == t.hidden_act == act
    with torch.device("meta"):
        target = CLIPModel(config)
    assert {k: tuple(x.shape) for k, x in converted.items()} == {k: tuple(x.shape) for k, x in target.state_dict().items()}


def test_unnamed_clip_l14_is_ambiguous(tmp_path):
    path = tmp_path / "clip-large.pt"
    torch.save(openai_clip_state(1024, 24, 14, 768, 12, 768), path)
    with pytest.raises(ConfigError, match="set backbone.family to one of openai, remoteclip, georsclip, skyclip"):
        load_backbone_weights("clip", path)


def test_heads_never_come_from_the_width(tmp_path):
    """A file no family describes, 160 wide with 5 heads (width / 64 would give 2): refused
    naming the keys, and loaded exactly once they are given."""
    source = tiny_clip_of(160, 5, "quick_gelu")
    path = tmp_path / "custom.pt"
    torch.save(export_openai_clip(source), path)
    with pytest.raises(ConfigError, match="set backbone.heads, backbone.act, backbone.mean, backbone.std"):
        load_backbone_weights("clip", path)
    model, _, _ = load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 5))
    assert model.config.vision_config.num_attention_heads == 5
    pixels, ids = clip_inputs()
    assert torch.equal(image_features(model, pixels), image_features(source, pixels))
    assert torch.equal(text_features(model, ids), text_features(source, ids))


def test_gelu_weights_run_exact_gelu_and_act_switches_it(tmp_path):
    """Weights trained with exact GELU (open_clip's default) reproduce their source only with
    act gelu; QuickGELU is about 1e-2 off."""
    source = tiny_clip_of(128, 2, "gelu")
    path = tmp_path / "custom.pt"
    torch.save(export_openai_clip(source), path)
    pixels, ids = clip_inputs()
    gelu, _, _ = load_backbone_weights("clip", path, overrides=Overrides(
        heads=2, act="gelu", mean=IMAGENET_MEAN, std=IMAGENET_STD))
    quick, _, _ = load_backbone_weights("clip", path, overrides=tiny_overrides("clip", 2))
    assert gelu.config.vision_config.hidden_act == gelu.config.text_config.hidden_act == "gelu"
    assert torch.equal(image_features(gelu, pixels), image_features(source, pixels))
    assert torch.equal(text_features(gelu, ids), text_features(source, ids))
    assert (image_features(quick, pixels) - image_features(source, pixels)).abs().max() > 1e-3


def test_open_clip_training_checkpoint_loads(tmp_path):
    """SkyCLIP's release layout: an open_clip training checkpoint (``module.`` keys, optimiser and
    scaler state) in a folder that names the model; tiny, it loads exactly; at the real ViT-B/32
    size it is matched to SkyCLIP and runs exact GELU."""
    source = tiny_clip_of(128, 2, "gelu")
    folder = tmp_path / "SkyCLIP_tiny"
    folder.mkdir()
    torch.save(open_clip_training_checkpoint(export_openai_clip(source)), folder / "epoch_20.pt")
    model, _, _ = load_backbone_weights("clip", folder / "epoch_20.pt", overrides=Overrides(
        heads=2, act="gelu", mean=IMAGENET_MEAN, std=IMAGENET_STD))
    pixels, _ = clip_inputs()
    assert torch.equal(image_features(model, pixels), image_features(source, pixels))

    folder = tmp_path / "SkyCLIP_ViT_B32_top50pct"
    folder.mkdir()
    torch.save(open_clip_training_checkpoint(openai_clip_state(768, 12, 32, 512, 12, 512)), folder / "epoch_20.pt")
    model, _, resolved = load_backbone_weights("clip", folder / "epoch_20.pt")
    assert (resolved.family.name, resolved.variant.name) == ("skyclip", "ViT-B/32")
    v, t = model.config.vision_config, model.config.text_config
    assert (v.num_attention_heads, t.num_attention_heads, v.hidden_act, t.hidden_act) == (12, 8, "gelu", "gelu")


# --------------------------------------------------------------------------------------------
# a student's settings, the summary and the model folder


def test_backbone_mean_sets_the_pretrained_bands_and_data_mean_the_rest(tmp_path):
    torch.save(export_dinov3_official(tiny_dinov3(depth=3)), tmp_path / "d.pth")
    student = {"name": "dino", "guidance": "queries", "backbone": {
        "kind": "dinov3", "weights": str(tmp_path / "d.pth"), "layers": [1, 2, 3],
        "mean": [0.3, 0.3, 0.2], "std": [0.2, 0.1, 0.1]}}
    cfg = load_config("demo", ["train.method=supervised", "model.name=students", f"model.students=[{student!r}]",
                               "data.bands=[1, 2, 3, 4]", "data.mean=[9, 9, 9, 0.7]", "data.std=[9, 9, 9, 0.4]"])
    built = build_student(cfg.model.students[0], cfg.data, in_channels=4)
    assert built.mean.flatten().tolist() == pytest.approx([0.3, 0.3, 0.2, 0.7])
    assert built.std.flatten().tolist() == pytest.approx([0.2, 0.1, 0.1, 0.4])


@pytest.mark.slow
def test_sat493m_file_trains_predicts_and_exports_with_its_family(tiny_dataset, tmp_path, capsys):
    """A DINOv3 SAT-493M file as Meta releases it (real ViT-L/16 shapes and name) trains and
    predicts normalised with the SAT-493M statistics; the summary reports the family and the
    exported folder records it with the DINOv3 notice."""
    weights = tmp_path / "weights" / SAT_FILE
    weights.parent.mkdir()
    torch.save(dinov3_vitl16_state(), weights)
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=2, val_every=2, method="supervised")
    cfg["model"] = {"name": "students", "students": [{
        "name": "sat", "guidance": "queries", "head_width": 16,
        "backbone": {"kind": "dinov3", "weights": str(weights), "layers": [6, 16, 24], "tune": "frozen"}}]}
    config = tmp_path / "sat.yaml"
    config.write_text(yaml.safe_dump(cfg))

    assert main(["model-summary", str(config), "--json", "--input-size", "32"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)["students"]
    assert summary["family"] == "dinov3-sat493m"
    assert (summary["architecture"]["width"], summary["architecture"]["depth"], summary["architecture"]["heads"],
            summary["architecture"]["patch"]) == (1024, 24, 16, 16)
    assert summary["act"] == "gelu"
    assert summary["normalisation"]["mean"] == pytest.approx(SAT493M_MEAN)
    assert summary["normalisation"]["std"] == pytest.approx(SAT493M_STD)

    assert main(["train", str(config), "--no-progress"]) == 0
    ckpt = tmp_path / "run" / "best.ckpt"
    folder = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(folder)]) == 0
    contract = json.loads((folder / "co2s_model.json").read_text())
    record = json.dumps(contract)
    assert '"family": "dinov3-sat493m"' in record and "0.43" in record
    notice = (folder / "NOTICE.md").read_text()
    assert BY_NAME["dinov3-sat493m"].notice in notice and "sat" in notice
    card = (folder / "README.md").read_text()  # the model card lists the weights, licence and citation
    family = BY_NAME["dinov3-sat493m"]
    assert f"fine-tuned from {family.title} (licence: {family.licence})" in card
    assert family.citation in card and "NOTICE.md" in card

    segmenter = Segmenter.load(folder)
    student = segmenter.models["sat"]
    assert student.mean.flatten().tolist() == pytest.approx(SAT493M_MEAN)
    assert student.std.flatten().tolist() == pytest.approx(SAT493M_STD)
    image = tiny_dataset / "images" / "t5.png"
    assert main(["predict", "--checkpoint", str(folder), str(image), "--out", str(tmp_path / "pred"),
                 "--no-progress"]) == 0
    assert (tmp_path / "pred" / "t5.png").is_file()


def test_sat_pair_preset_reads_the_satellite_dinov3_at_the_papers_relative_depths(tmp_path):
    (tmp_path / "sat.yaml").write_text("preset: [whdld, models/co2s-vitb16-sat-vitl16]\n")
    config = load_config(str(tmp_path / "sat.yaml"))
    clip, sat = config.model.students
    assert (clip.backbone.kind, clip.guidance, sat.backbone.kind, sat.guidance) == ("clip", "text", "dinov3", "queries")
    assert "sat" in sat.name and sat.backbone.layers == [6, 16, 24]  # 3, 8, 12 of 12 -> of 24
    resolved = resolve("dinov3", sat.backbone.weights, (1024, 24, 16), Overrides.of(sat.backbone))
    assert (resolved.family.name, resolved.mean, resolved.std) == ("dinov3-sat493m", SAT493M_MEAN, SAT493M_STD)
    built = build_student(sat.model_copy(update={"backbone": sat.backbone.model_copy(update={
        "weights": None, "arch": {"base": "vit-l16", "num_hidden_layers": 24, "hidden_size": 64,
                                  "intermediate_size": 64, "num_attention_heads": 1}})}), config.data)
    assert built.mean.flatten().tolist() == pytest.approx(SAT493M_MEAN)  # random weights sized as SAT: its inputs


def test_weights_doc_lists_every_family_as_the_table_says():
    """docs/weights.md's table rows: each family's name, every architecture (width / depth / heads /
    patch), its activations, licence and citation, as in co2s.models.families."""
    from pathlib import Path

    from co2s.models.families import FAMILIES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "weights.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `") and "backbone.family" not in line}
    assert set(rows) == {f.name for f in FAMILIES}
    for family in FAMILIES:
        row = rows[family.name]
        for v in family.variants:
            assert f"{v.name}: {v.width} / {v.depth} / {v.heads} / {v.patch}" in row, (family.name, v.name)
            assert v.act in row
        assert family.licence in row and family.citation in row


def test_layers_beyond_the_weights_depth_are_one_config_error(tmp_path):
    """The depth is known once the weights are read (ViT-L: 24); a layer list for another depth is
    a config error naming the weights, not a traceback."""
    torch.save(export_dinov3_official(tiny_dinov3(depth=3)), tmp_path / "d.pth")
    student = {"name": "dino", "guidance": "queries", "backbone": {
        "kind": "dinov3", "weights": str(tmp_path / "d.pth"), "layers": [3, 8, 12],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    cfg = load_config("demo", ["train.method=supervised", "model.name=students", f"model.students=[{student!r}]"])
    with pytest.raises(ConfigError, match=r"d\.pth\): layers \(3, 8, 12\) must be increasing block numbers in 1\.\.3"):
        build_student(cfg.model.students[0], cfg.data)
