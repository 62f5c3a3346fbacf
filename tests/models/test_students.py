"""ViT students built from config with random weights (tiny and full-size architectures)."""

import pytest
import torch
import torch.nn.functional as F

from co2s.config.loader import load_config
from co2s.models.backbones.clip import ClipBackbone
from co2s.models.student_factory import _random_model, build_student
from co2s.models.backbones.dino import DinoV3Backbone


def _student_cfg(kind, guidance="queries", head="vlg", **backbone):
    return {"name": kind, "backbone": {"kind": kind, "arch": "tiny", **backbone}, "guidance": guidance,
            "head": head}


def _config(*students):
    return load_config("demo", ["train.method=supervised", "model.name=students", f"model.students={list(students)!r}"])


def test_maskclip_dense_embedding_matches_a_hand_computation():
    torch.manual_seed(0)
    model = _random_model("clip", "tiny").eval()
    backbone = ClipBackbone(model.vision_model, model.visual_projection, (0, 1))
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        got = backbone(x).last
        hidden = model.vision_model(x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        z = _value_path_by_hand(model.vision_model.encoder.layers[-1], hidden[-2])  # MaskCLIP's last block
        post = model.vision_model.post_layernorm
        z = F.layer_norm(z, z.shape[-1:], post.weight, post.bias, post.eps)
        e = F.normalize(z[:, 1:] @ model.visual_projection.weight.T, dim=-1)
        expected = e.transpose(1, 2).reshape(2, -1, 3, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _value_path_by_hand(blk, z):
    """Block ``blk`` with attention replaced by its value path, from the module's weights:
    z + out_proj(v_proj(ln_1 z)), then z + fc2(quick_gelu(fc1(ln_2 z)))."""
    eps = blk.layer_norm1.eps
    y = F.layer_norm(z, z.shape[-1:], blk.layer_norm1.weight, blk.layer_norm1.bias, eps)
    v = y @ blk.self_attn.v_proj.weight.T + blk.self_attn.v_proj.bias
    z = z + v @ blk.self_attn.out_proj.weight.T + blk.self_attn.out_proj.bias
    y = F.layer_norm(z, z.shape[-1:], blk.layer_norm2.weight, blk.layer_norm2.bias, eps)
    h = y @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
    h = h * torch.sigmoid(1.702 * h)  # quick_gelu
    return z + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


@pytest.mark.parametrize("mode", ["hidden", "value"])
def test_clip_skip_maps_match_a_hand_computation(mode):
    """hidden: hidden states 0 and 2; value (the paper's code): the value path of blocks 1 and 3
    applied to those hidden states, no ln_post. Both [B, width, h, w] patch maps."""
    torch.manual_seed(0)
    model = _random_model("clip", "tiny").eval()
    backbone = ClipBackbone(model.vision_model, model.visual_projection, (0, 2), skip_mode=mode)
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        got = backbone(x).skips
        hidden = model.vision_model(x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        layers = model.vision_model.encoder.layers
        expected = []
        for i in (0, 2):
            z = hidden[i] if mode == "hidden" else _value_path_by_hand(layers[i], hidden[i])
            expected.append(z[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4))
    assert [tuple(t.shape) for t in got] == [(2, 64, 3, 4)] * 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the two modes really differ
    other = ClipBackbone(model.vision_model, model.visual_projection, (0, 2),
                         skip_mode="hidden" if mode == "value" else "value")
    with torch.no_grad():
        assert not torch.allclose(other(x).skips[0], got[0])


def test_clip_skips_switch_from_config_and_checkpoint(tmp_path):
    """backbone.skips reaches the backbone, defaults to hidden, is refused for DINO, and a saved
    model is rebuilt with the mode it was trained with (the config is in the checkpoint)."""
    from co2s.engine.checkpoint import write_model_checkpoint
    from co2s.models.loading import load_trained_models
    from co2s.errors import ConfigError

    default = _config(_student_cfg("clip"))
    assert default.model.students[0].backbone.skips == "hidden"
    assert build_student(default.model.students[0], default.data).backbone.skip_mode == "hidden"
    config = _config(_student_cfg("clip", skips="value"))
    student = build_student(config.model.students[0], config.data).eval()
    assert student.backbone.skip_mode == "value"
    with pytest.raises(ConfigError, match="skips: value is for clip"):
        _config(_student_cfg("dinov3", skips="value"))
    path = write_model_checkpoint(tmp_path / "m.ckpt", config, {"clip": student})
    loaded = load_trained_models(path)
    (model,) = loaded.models.values()
    assert model.backbone.skip_mode == "value" and loaded.contract.architectures["clip"]["backbone"]["skips"] == "value"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), student(x))


def test_packaged_clip_students_use_the_papers_value_skips(tmp_path):
    """The paper's choice: value paths of blocks 1 and 5 ([0, 4] with skips: value)."""
    configs = [load_config("whdld"), load_config("demo")]
    for fragment in ("clip-clip-vitb16", "clip-dinov2-vitb"):
        path = tmp_path / f"{fragment}.yaml"
        path.write_text(f"preset: [whdld, models/{fragment}]\n")
        configs.append(load_config(str(path)))
    clips = [s.backbone for c in configs for s in c.model.students if s.backbone.kind == "clip"]
    assert len(clips) == 5 and all(b.skips == "value" for b in clips)
    assert all(b.layers == [0, 4] for b in clips if b.arch == "vit-b16" and b.weights)


@pytest.mark.parametrize("size", [(256, 256), (512, 512), (160, 288)])
def test_student_logits_have_the_input_size(size):
    torch.manual_seed(0)
    config = _config(_student_cfg("dinov3"))
    student = build_student(config.model.students[0], config.data).eval()
    with torch.no_grad():
        out = student(torch.rand(1, 3, *size))
    assert out.shape == (1, 6, *size)


def test_clip_student_with_text_prototypes_file_and_feature_perturbation(tmp_path):
    from co2s.models.guidance import save_prototypes

    config = _config(_student_cfg("clip", guidance="text"))
    protos = F.normalize(torch.randn(6, 32), dim=-1)
    save_prototypes(tmp_path / "p.safetensors", protos, config.data.classes)
    cfg = config.model.students[0].model_copy(update={"text": config.model.students[0].text.model_copy(
        update={"prototypes": str(tmp_path / "p.safetensors")})})
    student = build_student(cfg, config.data).eval()
    torch.testing.assert_close(student.guidance(), protos)
    assert not any(p.requires_grad for p in student.guidance.parameters())
    clean, perturbed = student(torch.rand(2, 3, 64, 96), perturb_features=True)
    assert clean.shape == perturbed.shape == (2, 6, 64, 96)
    assert not torch.allclose(clean, perturbed)


def test_tuning_policies_and_parameter_groups():
    config = _config(_student_cfg("dinov3", tune="attention"))
    student = build_student(config.model.students[0], config.data)
    trainable = [n for n, p in student.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(any(k in n for k in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in trainable)
    groups = {g["name"]: g for g in student.param_groups(1e-4, 0.01)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-6) and groups["decoder"]["lr"] == pytest.approx(1e-3)
    assert groups["queries"]["lr"] == pytest.approx(1e-4)
    assert groups["decoder/no_decay"]["weight_decay"] == 0 and groups["decoder"]["weight_decay"] == 0.01
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert grouped == {id(p) for p in student.parameters() if p.requires_grad}

    frozen = build_student(_config(_student_cfg("dinov3", tune="frozen")).model.students[0], config.data)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    last = build_student(_config(_student_cfg("dinov3", tune="last_n", tune_last=1)).model.students[0], config.data)
    blocks = last.backbone.blocks()
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())


@pytest.mark.parametrize("skips", ["hidden", "value"])
@pytest.mark.parametrize("tune", ["full", "attention"])
def test_clip_last_block_queries_and_keys_stay_frozen(skips, tune):
    """The dense path never uses them, so they would get no gradient (and break DDP). With value
    skips the skip blocks' q/k are still used by the normal forward: nothing else goes unused."""
    config = _config(_student_cfg("clip", guidance="queries", tune=tune, skips=skips, layers=[0, 2]))
    student = build_student(config.model.students[0], config.data)
    last = student.backbone.vision.encoder.layers[-1].self_attn
    assert not last.q_proj.weight.requires_grad and last.v_proj.weight.requires_grad
    out = student(torch.rand(1, 3, 32, 32))
    out.mean().backward()
    no_grad = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad


def test_deeplab_head_without_guidance_and_dinov2():
    config = _config(_student_cfg("dinov2", guidance="none", head="deeplabv3plus"))
    student = build_student(config.model.students[0], config.data).eval()
    assert student.guidance is None
    assert student(torch.rand(1, 3, 64, 64)).shape == (1, 6, 64, 64)


def test_dinov3_rope_rescale_switch():
    torch.manual_seed(0)
    model = _random_model("dinov3", "tiny").train()
    backbone = DinoV3Backbone(model, (1, 2, 4), rope_rescale=False)
    x = torch.rand(1, 3, 32, 32)
    torch.manual_seed(1)
    a = backbone(x).last
    torch.manual_seed(2)
    b = backbone(x).last
    torch.testing.assert_close(a, b)  # no random coordinates in train mode any more


def test_invalid_student_configs():
    from co2s.errors import ConfigError

    with pytest.raises(ConfigError, match="text guidance needs a CLIP backbone"):
        _config(_student_cfg("dinov3", guidance="text"))
    with pytest.raises(ConfigError, match="vlg head needs guidance"):
        _config(_student_cfg("clip", guidance="none"))
