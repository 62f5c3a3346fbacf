"""CLIP tokenizer sources (OpenAI's BPE file, the Hub's vocabulary files, cached Hub ids) and the
checks that a tokenizer fits the CLIP text tower it feeds (fixtures: tests/models/clip_text.py)."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from co2s.config.loader import load_config
from co2s.errors import CheckpointError
from co2s.models.backbones.weights import load_backbone_weights
from co2s.models.families import Overrides
from co2s.models.guidance import clip_text_prototypes, concept_lists
from co2s.models.student_factory import _random_model, build_student
from co2s.models.text_encoder import encode_prompts, load_tokenizer
from tests.models.clip_text import (
    OPENAI_TINY_FILE,
    OPENAI_TINY_KEYS,
    USED_MERGES,
    bpe_merges,
    openai_prototypes,
    openai_tokenize,
    prompt_words,
    write_hf_vocab,
    write_openai_bpe,
    write_openai_clip_files,
)

BPE = "bpe_simple_vocab_16e6.txt.gz"

OVERRIDES = Overrides(heads=OPENAI_TINY_KEYS["heads"], act=OPENAI_TINY_KEYS["act"],
                      mean=tuple(OPENAI_TINY_KEYS["mean"]), std=tuple(OPENAI_TINY_KEYS["std"]))


def _data():
    return load_config("demo").data


def _config(*students):
    return load_config("demo", ["train.method=supervised", "model.name=students", f"model.students={list(students)!r}"])


def _clip_student(weights, **text):
    """A CLIP student of tiny weights, which no family describes: an OpenAI-layout file needs its
    heads and activation stated, a save_pretrained folder (its config says them) only the mean/std."""
    keys = OPENAI_TINY_KEYS if Path(weights).is_file() else {k: OPENAI_TINY_KEYS[k] for k in ("mean", "std")}
    return {"name": "clip", "backbone": {"kind": "clip", "weights": str(weights), **keys}, "guidance": "text",
            "text": text}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    source, merges = write_openai_clip_files(root, _data())
    text_config = load_backbone_weights("clip", root / OPENAI_TINY_FILE, overrides=OVERRIDES).model.config.text_config
    return SimpleNamespace(root=root, pt=root / OPENAI_TINY_FILE, bpe=root / BPE, source=source, merges=merges,
                           text_config=text_config)


def test_openai_bpe_file_encodes_like_openais_tokenizer(official):
    data = _data()
    prompts = [f"a photo of a {c}" for names in concept_lists(data.classes, data.concepts) for c in names]
    expected = openai_tokenize(prompts, official.merges)
    for source in (official.bpe, official.root):  # the file, or a folder holding it
        tokenizer = load_tokenizer(source)
        assert len(tokenizer) == 49408 == official.text_config.vocab_size
        tokens = encode_prompts(tokenizer, prompts, official.text_config, str(source))
        ids = tokens["input_ids"] * tokens["attention_mask"]
        assert torch.equal(ids, expected[:, : ids.shape[1]]) and not expected[:, ids.shape[1]:].any()
    vocab = tokenizer.get_vocab()
    merges = bpe_merges(prompt_words(data.classes, data.concepts))
    assert "".join(merges[USED_MERGES - 1]) in vocab and "".join(merges[USED_MERGES]) not in vocab
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


def test_prototypes_from_openai_bpe_equal_those_from_hub_vocab_files(official, tmp_path):
    """Acceptance: with only OpenAI's ViT-B-16.pt and bpe_simple_vocab_16e6.txt.gz the prototypes
    are those of the Hub layout (save_pretrained weights + vocab.json/merges.txt), and those of
    OpenAI's own tokenization and text encoder; every class gets its own prototype."""
    cfg = _config(_clip_student(official.pt, tokenizer=str(official.bpe)))
    from_openai = build_student(cfg.model.students[0], cfg.data).guidance()

    model = load_backbone_weights("clip", official.pt, overrides=OVERRIDES).model
    hub = tmp_path / "clip-vit-tiny-patch16"
    model.save_pretrained(hub)
    write_hf_vocab(hub, official.merges)
    cfg_hub = _config(_clip_student(hub))
    from_hub = build_student(cfg_hub.model.students[0], cfg_hub.data).guidance()
    torch.testing.assert_close(from_openai, from_hub, rtol=1e-6, atol=1e-7)

    expected = openai_prototypes(official.source, official.merges, concept_lists(cfg.data.classes, cfg.data.concepts))
    torch.testing.assert_close(from_openai, expected, rtol=1e-5, atol=1e-5)
    distance = torch.cdist(from_openai, from_openai)  # all equal (0) with a vocabulary-less tokenizer
    assert distance[~torch.eye(len(distance), dtype=torch.bool)].min() > 1e-3


def test_tokenizer_source_without_vocabulary_is_refused(official, tmp_path):
    """Before: transformers built a 2-token tokenizer, every prompt got the same ids and all
    class prototypes were identical. Now the source is named."""
    model = load_backbone_weights("clip", official.pt, overrides=OVERRIDES).model
    weights_only = tmp_path / "clip-weights-only"
    model.save_pretrained(weights_only)  # the tokenizer defaults to the CLIP source: no vocabulary there
    cfg = _config(_clip_student(weights_only))
    with pytest.raises(CheckpointError, match=r"clip-weights-only: the folder holds no CLIP tokenizer vocabulary"):
        build_student(cfg.model.students[0], cfg.data)

    elsewhere = tmp_path / "notes"
    elsewhere.mkdir()
    (elsewhere / "README.md").write_text("not a tokenizer")
    with pytest.raises(CheckpointError, match=r"notes: the folder holds no CLIP tokenizer vocabulary"):
        clip_text_prototypes(cfg.data, cfg.model.students[0], tokenizer=str(elsewhere))
    with pytest.raises(CheckpointError, match=r"ViT-tiny\.pt: not a tokenizer vocabulary"):
        clip_text_prototypes(cfg.data, _config(_clip_student(official.pt)).model.students[0])
    with pytest.raises(CheckpointError, match=r"co2s-test/absent: .*not in .*hub.*nothing is downloaded"):
        load_tokenizer("co2s-test/absent", cache_dir=tmp_path / "hub")


def test_tokenizer_that_does_not_fit_the_text_tower_is_refused(official, tmp_path):
    data = _data()
    small = tmp_path / "small"
    small.mkdir()
    write_openai_bpe(small / BPE, prompt_words(data.classes, data.concepts), total=1000)
    cfg = _config(_clip_student(official.pt, tokenizer=str(small)))
    with pytest.raises(CheckpointError, match=r"small: 1514 tokens, but the CLIP text tower has a vocabulary of 49408"):
        build_student(cfg.model.students[0], cfg.data)

    tokenizer = load_tokenizer(official.bpe)
    other = copy.deepcopy(official.text_config)
    other.eos_token_id = 3
    with pytest.raises(CheckpointError, match=r"end-of-text token has id 49407, but the CLIP text tower pools at id 3"):
        encode_prompts(tokenizer, ["a photo of a forest"], other, "bpe")
    other.eos_token_id = 2  # configs from before transformers' fix pool at the largest id: 49407
    encode_prompts(tokenizer, ["a photo of a forest"], other, "bpe")


def test_long_prompts_are_truncated_with_a_warning(official):
    tokenizer = load_tokenizer(official.bpe)
    long = "a photo of a " + " ".join(["forest"] * 90)
    with pytest.warns(UserWarning, match=r"prompt 'a photo of a forest forest .*' is 96 tokens long.* "
                                         r"truncated to 77 tokens"):
        tokens = encode_prompts(tokenizer, ["a photo of a water", long], official.text_config, "bpe")
    ids = tokens["input_ids"]
    assert ids.shape == (2, 77) and ids[1, -1] == 49407 and tokens["attention_mask"][1].all()
    assert torch.equal(ids[1], openai_tokenize([long], official.merges)[0])  # clip.tokenize(truncate=True)

    data = SimpleNamespace(classes=["forest", "water"], concepts={"forest": [" ".join(["woodland"] * 80)]})
    student = _config(_clip_student(official.pt, tokenizer=str(official.bpe))).model.students[0]
    with pytest.warns(UserWarning, match="woodland woodland"):
        result = clip_text_prototypes(data, student)
    assert result.prototypes.shape == (2, 32) and torch.isfinite(result.prototypes).all()


def test_prototype_sources_from_the_student_or_given_explicitly(tmp_path):
    """The student's sources (weights folder holding the vocabulary files) or explicit --clip /
    --tokenizer style arguments (OpenAI's BPE file) give the same prototypes."""
    torch.manual_seed(0)
    model = _random_model("clip", "tiny")
    model.save_pretrained(tmp_path / "clip")
    data = _data()
    merges = write_openai_bpe(tmp_path / BPE, prompt_words(data.classes, data.concepts))
    write_hf_vocab(tmp_path / "clip", merges)
    a = clip_text_prototypes(data, _config(_clip_student(tmp_path / "clip")).model.students[0]).prototypes
    b = clip_text_prototypes(data, None, clip=str(tmp_path / "clip"), tokenizer=str(tmp_path / BPE)).prototypes
    torch.testing.assert_close(a, b)
