"""Students built from saved weights keep exactly those weights, and text prototypes from a real
(tiny) CLIP text tower and tokenizer."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from co2s.cli.main import main
from co2s.config.loader import load_config
from co2s.errors import CheckpointError
from co2s.models.backbones.weights import verify_weights
from co2s.models.guidance import concept_lists, load_prototypes
from co2s.models.student_factory import _random_model, build_backbone, build_student
from co2s.models.student import Student
from tests.conftest import tiny_weights
from tests.models.clip_text import USED_MERGES, bpe_merges, prompt_words, write_hf_vocab


@pytest.fixture
def saved_clip(tmp_path):
    """A tiny CLIP (the real 49408-token text vocabulary) saved with the Hub's tokenizer files."""
    torch.manual_seed(0)
    model = _random_model("clip", "tiny")
    model.save_pretrained(tmp_path / "clip")
    data = load_config("demo").data
    write_hf_vocab(tmp_path / "clip", bpe_merges(prompt_words(data.classes, data.concepts))[:USED_MERGES])
    return tmp_path / "clip", model


@pytest.fixture
def saved_dino(tmp_path):
    torch.manual_seed(1)
    model = _random_model("dinov3", "tiny")
    model.save_pretrained(tmp_path / "dino")
    return tmp_path / "dino", model


def _config(*students):
    return load_config("demo", ["train.method=supervised", "model.name=students", f"model.students={list(students)!r}"])


def test_backbone_keeps_the_checkpoint_weights_through_every_build_step(saved_dino):
    path, source = saved_dino
    reference = {k: v.clone() for k, v in source.state_dict().items()}
    cfg = _config({"name": "dino", "backbone": {"kind": "dinov3", "weights": str(path), **tiny_weights("dinov3")}, "guidance": "queries"})
    student_cfg = cfg.model.students[0]

    backbone, hf_model, loaded_reference, _ = build_backbone(student_cfg.backbone)  # load, wrap, tune
    assert loaded_reference.keys() == reference.keys()
    verify_weights(hf_model, reference, str(path))
    student = build_student(student_cfg, cfg.data)  # guidance, head, Student, start-up check
    verify_weights(student.backbone.model, reference, str(path))
    torch.optim.AdamW(student.param_groups(1e-4, 0.01))
    student.train()
    student(torch.rand(1, 3, 32, 32))  # a forward in train mode changes nothing either
    verify_weights(student.backbone.model, reference, str(path))
    # and a re-initialisation after loading (the defect of the reference code) is caught
    student.backbone.model.model.layer[1].attention.q_proj.reset_parameters()
    with pytest.raises(CheckpointError, match=r"layer\.1\.attention\.q_proj\.weight"):
        verify_weights(student.backbone.model, reference, str(path))


def test_start_up_check_catches_a_reinitialising_build_step(saved_dino, monkeypatch):
    path, _ = saved_dino
    cfg = _config({"name": "dino", "backbone": {"kind": "dinov3", "weights": str(path), **tiny_weights("dinov3")}, "guidance": "queries"})
    original = Student.__init__

    def reinit(self, backbone, *args, **kwargs):
        backbone.model.model.layer[0].mlp.up_proj.reset_parameters()  # a buggy init_weights
        original(self, backbone, *args, **kwargs)

    monkeypatch.setattr(Student, "__init__", reinit)
    with pytest.raises(CheckpointError, match="up_proj"):
        build_student(cfg.model.students[0], cfg.data)


def test_text_prototypes_from_clip_text_tower(saved_clip, tmp_path, capsys):
    path, source = saved_clip
    cfg = _config({"name": "clip", "backbone": {"kind": "clip", "weights": str(path), **tiny_weights("clip")}, "guidance": "text"})
    student = build_student(cfg.model.students[0], cfg.data)
    # recompute by hand: mean of the text embeddings of "a photo of a {c}" per class, then L2 norm
    tokenizer = CLIPTokenizer.from_pretrained(path)
    source.eval()
    expected = []
    with torch.no_grad():
        for names in concept_lists(cfg.data.classes, cfg.data.concepts):
            tokens = tokenizer([f"a photo of a {c}" for c in names], padding=True, return_tensors="pt")
            emb = source.get_text_features(**tokens)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            expected.append(emb.mean(0))
    expected = F.normalize(torch.stack(expected), dim=-1)
    torch.testing.assert_close(student.guidance(), expected, rtol=1e-5, atol=1e-6)
    distance = torch.cdist(expected, expected)  # one prototype per class, not one for all
    assert distance[~torch.eye(len(distance), dtype=torch.bool)].min() > 1e-3

    # `co2s embed-text` saves the same prototypes; a config can point at the file
    config_file = tmp_path / "c.yaml"
    config_file.write_text(json.dumps({"preset": "demo", "train": {"method": "supervised"}, "model": {"name": "students", "students": [
        {"$patch": "replace"},  # one student instead of the demo's two
        {"name": "clip", "backbone": {"kind": "clip", "weights": str(path), **tiny_weights("clip")}, "guidance": "text"}]}}))
    out = tmp_path / "protos.safetensors"
    assert main(["embed-text", str(config_file), "--out", str(out)]) == 0
    torch.testing.assert_close(load_prototypes(out, cfg.data.classes, 32), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="prototypes are for classes"):
        load_prototypes(out, list(reversed(cfg.data.classes)))
    with pytest.raises(CheckpointError, match="are 32-d, the CLIP student needs 512-d"):
        load_prototypes(out, cfg.data.classes, 512)
