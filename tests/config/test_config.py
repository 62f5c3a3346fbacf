import pytest
import yaml

from co2s.config.loader import load_config, preset_names
from co2s.errors import ConfigError

PAPER = {"whdld": 6, "loveda": 7, "potsdam": 6, "gid15": 15, "mer": 9, "msl": 9}


def test_every_preset_validates():
    names = preset_names()
    assert set(PAPER) | {"ai4mars", "demo"} <= set(names)
    for name in names:
        config = load_config(name)
        assert len(config.data.palette) == config.data.num_classes


@pytest.mark.parametrize("name,classes", PAPER.items())
def test_paper_presets_follow_the_spec(name, classes):
    config = load_config(name)
    assert config.data.num_classes == classes
    assert config.data.reduce_zero_label == (name in {"whdld", "loveda", "potsdam"})
    assert config.train.crop_size == (256 if name == "whdld" else 512)
    assert config.train.epochs == (150 if name == "mer" else 80)
    # every class has a concept list (the class name itself is added when prompts are built)
    assert set(config.data.concepts) == set(config.data.classes)


def test_ai4mars_preset_matches_the_shared_data_readme():
    config = load_config("ai4mars")
    assert config.data.classes == ["soil", "bedrock", "sand", "big_rock"]
    assert config.data.ignore_index == 255
    assert config.data.splits.test.endswith("test_gold.txt")


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_key_names_file_and_key_path(tmp_path):
    path = _write(tmp_path, "preset: demo\ntrain:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert path in str(err.value) and "train.lerning_rate" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_names_key_path(tmp_path):
    path = _write(tmp_path, "preset: demo\ntrain:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(path)


def test_missing_required_value(tmp_path):
    path = _write(tmp_path, "data:\n  root: x\ntrain:\n  iters: 3\n")
    with pytest.raises(ConfigError, match=r"data\.classes: required value missing"):
        load_config(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = _write(tmp_path, "preset: demo\ntrain:\n  iters: [1, 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+"):
        load_config(path)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="unknown preset 'whdl'.*whdld"):
        load_config("whdl")


def test_set_overrides_parse_values_and_reject_typos():
    config = load_config("demo", ["train.iters=7", "data.bands=[1, 2, 3]", "train.lr=2e-4"])
    assert config.train.iters == 7 and config.data.bands == [1, 2, 3] and config.train.lr == 2e-4
    with pytest.raises(ConfigError, match=r"train\.itres.*unknown key"):
        load_config("demo", ["train.itres=7"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config("demo", ["train.iters"])


def test_base_file_and_environment_variables(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"preset": "demo", "train": {"iters": 11}}))
    child = _write(tmp_path, "base: base.yaml\ndata:\n  root: ${MY_DATA:-fallback}/x\n")
    assert load_config(child).data.root == str(tmp_path / "fallback" / "x")  # beside the file
    monkeypatch.setenv("MY_DATA", "/data")
    config = load_config(child)
    assert config.data.root == "/data/x" and config.train.iters == 11
    assert config.data.classes[0] == "cropland"  # inherited from the demo preset


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="palette has 2 colours for 6 classes"):
        load_config("demo", ["data.palette=[[1,2,3],[4,5,6]]"])
    with pytest.raises(ConfigError, match="train.iters or train.epochs"):
        load_config("demo", ["train.iters=null"])
    with pytest.raises(ConfigError, match="duplicate class"):
        load_config("demo", ["data.classes=[a, a, b, c, d, e]", "data.concepts={}"])


def test_demo_preset_matches_the_generated_data():
    from co2s.demo.synthetic import DEMO_CLASSES, DEMO_PALETTE

    config = load_config("demo")
    assert tuple(config.data.classes) == DEMO_CLASSES
    assert [tuple(c) for c in config.data.palette] == list(DEMO_PALETTE)


def test_configuration_doc_is_generated_from_the_schema():
    """docs/configuration.md's key reference is the schema's, field by field, and every field is
    described (regenerate: python -m co2s.config.reference --write docs/configuration.md)."""
    from pathlib import Path

    from co2s.config.reference import markdown_reference, replace_generated

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    text = doc.read_text()
    assert replace_generated(text) == text, "docs/configuration.md is stale: regenerate it"
    undocumented = [line for line in markdown_reference().splitlines() if line.endswith("|  |")]
    assert not undocumented, f"schema fields without a description: {undocumented}"


def test_model_section_is_a_union_by_name_and_config_is_immutable():
    from pydantic import ValidationError

    from co2s.config.loader import load_config
    from co2s.errors import ConfigError

    with pytest.raises(ConfigError, match="model.students: unknown key"):
        load_config("demo", ["model.name=lite_unet"])  # student keys on the CNN
    with pytest.raises(ConfigError, match="model.width: unknown key"):
        load_config("demo", ["model.width=8"])  # CNN keys on the students
    with pytest.raises(ConfigError, match="trains one model, but model.students has 2 \\(clip, cnn\\)"):
        load_config("demo", ["train.method=unimatch"])
    cnn = load_config("demo", ["model={name: lite_unet, width: 8}", "train.method=supervised"])
    assert cnn.model.name == "lite_unet" and cnn.model.width == 8
    with pytest.raises(ValidationError):
        cnn.train.iters = 5  # frozen
    changed = cnn.override({"train.iters": 7, "train.augment.cutmix.p": 0.25})
    assert changed.train.iters == 7 and changed.train.augment.cutmix.p == 0.25 and cnn.train.iters != 7
    with pytest.raises(ConfigError, match="train.semi.loss_weights.fp"):
        cnn.override(["train.semi.loss_weights.fp=-1"])  # validators run again
    paper = load_config(["ai4mars", "models/co2s-tiny"], {"train.method": "co2s", "data.splits.unlabelled": "u.txt"})
    assert [s.name for s in paper.model.students] == ["clip", "dino"]
    assert paper.override({"eval.prediction": "dino"}).eval.prediction == "dino"
    with pytest.raises(ConfigError, match="eval.prediction must be one of"):
        paper.override({"eval.prediction": "median"})
    with pytest.raises(ConfigError, match="eval.prediction must be one of \\['model', 'auto'\\]"):
        cnn.override({"eval.prediction": "mean"})  # a fusion needs two students


def test_a_key_given_twice_is_an_error_not_a_silent_drop(tmp_path):
    """A second ``train:`` block (or ``lr:`` given twice) would make YAML keep the last and drop the
    first without a word; it stops with both lines. Anchors and merge keys still override."""
    path = _write(tmp_path, "base: demo\ntrain:\n  iters: 10\ntrain:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line 4, column 1: invalid YAML: the key 'train' is given "
                                          r"twice in one mapping \(first on line 2\)"):
        load_config(path)
    path = _write(tmp_path, "base: demo\ntrain:\n  iters: 10\n  lr: 0.01\n  iters: 20\n")
    with pytest.raises(ConfigError, match=r"line 5, column 3: .* key 'iters' is given twice .*first on line 3"):
        load_config(path)
    path = _write(tmp_path, "base: demo\ntrain:\n  <<: {iters: 10, lr: 0.01}\n  iters: 20\n")
    config = load_config(path)
    assert config.train.iters == 20 and config.train.lr == 0.01
