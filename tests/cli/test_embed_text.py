"""`co2s embed-text` with OpenAI's own files (a tiny TorchScript CLIP + bpe_simple_vocab_16e6.txt.gz), and its
refusals (fixtures: tests/models/clip_text.py)."""

import json

import pytest
import torch

from co2s.cli.main import main
from co2s.config.loader import load_config
from co2s.models.guidance import concept_lists, load_prototypes
from tests.models.clip_text import OPENAI_TINY_FILE, OPENAI_TINY_KEYS, openai_prototypes, write_openai_clip_files


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    data = load_config("demo").data
    source, merges = write_openai_clip_files(root, data)
    expected = openai_prototypes(source, merges, concept_lists(data.classes, data.concepts))
    return root, expected


def test_embed_text_from_openai_files(official, tmp_path, capsys):
    root, expected = official
    pt, bpe = root / OPENAI_TINY_FILE, root / "bpe_simple_vocab_16e6.txt.gz"
    classes = load_config("demo").data.classes
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"preset": "demo", "train": {"method": "supervised"}, "model": {
        "name": "students", "students": [{"$patch": "replace"},  # one student, not merged with the demo's two
                                         {"name": "clip", "backbone": {"kind": "clip", "weights": str(pt), **OPENAI_TINY_KEYS},
                                          "guidance": "text", "text": {"tokenizer": str(bpe)}}]}}))
    out = tmp_path / "protos.safetensors"
    assert main(["embed-text", str(config), "--out", str(out)]) == 0
    assert "6 class prototypes of dimension 32" in capsys.readouterr().out
    torch.testing.assert_close(load_prototypes(out, classes, 32), expected, rtol=1e-5, atol=1e-5)

    # --clip / --tokenizer with a config whose CLIP student has no weights (the folder holds the BPE
    # file); the student's keys describe the tiny file, which no weight family has
    described = tmp_path / "described.yaml"
    described.write_text(json.dumps({"preset": "demo", "train": {"method": "supervised"}, "model": {
        "name": "students", "students": [{"$patch": "replace"}, {"name": "clip", "backbone": {"kind": "clip", "arch": "tiny",
                                                                       **OPENAI_TINY_KEYS}, "guidance": "text"}]}}))
    out2 = tmp_path / "protos2.safetensors"
    assert main(["embed-text", str(described), "--clip", str(pt), "--tokenizer", str(root), "--out", str(out2)]) == 0
    torch.testing.assert_close(load_prototypes(out2, classes, 32), expected, rtol=1e-5, atol=1e-5)


def test_embed_text_refuses_a_source_without_vocabulary(official, tmp_path, capsys):
    root, _ = official
    out = tmp_path / "p.safetensors"
    assert main(["embed-text", "demo", "--clip", str(root / OPENAI_TINY_FILE), "--out", str(out)]) == 2
    assert f"{OPENAI_TINY_FILE}: not a tokenizer vocabulary" in capsys.readouterr().err
    assert main(["embed-text", "demo", "--out", str(out)]) == 2
    assert "text prototypes need CLIP weights" in capsys.readouterr().err
    assert not out.exists()
