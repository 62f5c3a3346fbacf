"""A user's config on top of a preset: students merge by name, lists index under --set, another
model replaces the model section (co2s.config.merge, co2s.config.overrides)."""

import warnings

import pytest
import yaml

from co2s.cli.main import main
from co2s.config.loader import load_config
from co2s.errors import ConfigError


def _write(tmp_path, text: str, name: str = "mine.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_restating_loveda_students_weights_keeps_their_guidance_skips_and_layers(tmp_path):
    """The natural YAML override of weight paths: before, lists replaced and the CLIP student
    silently lost text guidance (queries), its value skips (hidden) and its skip layers."""
    preset = load_config("loveda")
    mine = load_config(_write(tmp_path, """
base: loveda
model:
  students:
    - name: clip
      backbone: {weights: /weights/ViT-B-16.pt}
    - name: dino
      backbone: {weights: /weights/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth}
"""))
    for before, after in zip(preset.model.students, mine.model.students):
        assert after.backbone.weights.startswith("/weights/")
        assert after.model_dump(exclude={"backbone": {"weights"}}) == before.model_dump(exclude={"backbone": {"weights"}})
    assert mine.model.students[0].guidance == "text" and mine.model.students[0].backbone.skips == "value"
    assert mine.model.students[0].backbone.layers == [0, 4]


def test_set_indexes_students_by_position_and_by_name():
    by_position = load_config("loveda", ["model.students.0.backbone.weights=/w/ViT-B-16.pt"])
    by_name = load_config("loveda", ["model.students.clip.backbone.weights=/w/ViT-B-16.pt"])
    assert by_position == by_name
    assert by_name.model.students[0].backbone.weights == "/w/ViT-B-16.pt"
    assert by_name.model.students[0].guidance == "text"
    assert by_name.model.students[1] == load_config("loveda").model.students[1]


@pytest.mark.parametrize("override,message", [
    ("model.students.2.backbone.weights=x", "model.students has 2 items; no item 2"),
    ("model.students.vit.backbone.weights=x", "index it by position (0 to 1) or by name (clip, dino)"),
    ("model.students.0.backbone.weights.x=1", "'weights' is a value, not a section or list"),
])
def test_set_into_a_list_that_has_no_such_item_is_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("loveda", [override])


def test_set_replaces_the_whole_list():
    one = [{"name": "solo", "backbone": {"kind": "dinov3", "arch": "tiny"}, "guidance": "queries"}]
    config = load_config("loveda", {"model.students": one, "train.method": "supervised"})
    assert [s.name for s in config.model.students] == ["solo"]


def test_a_new_name_adds_a_student_and_delete_removes_one(tmp_path):
    base = _write(tmp_path, """
base: [demo, models/co2s-tiny]
model:
  students:
    - {name: dino, $patch: delete}
""", "one.yaml")
    config = load_config([base, _write(tmp_path, "train: {method: supervised}\n", "sup.yaml")])
    assert [s.name for s in config.model.students] == ["clip"]
    assert config.model.students[0].guidance == "text"  # what remains is untouched
    added = load_config(_write(tmp_path, """
base: one.yaml
model:
  students:
    - {name: cnn, backbone: {kind: cnn}, guidance: queries}
"""))
    assert [s.name for s in added.model.students] == ["clip", "cnn"]


def test_patch_replace_replaces_the_list(tmp_path):
    config = load_config(_write(tmp_path, """
base: loveda
train: {method: supervised}
model:
  students:
    - $patch: replace
    - {name: clip, backbone: {kind: clip, arch: tiny}, guidance: text, text: {prototypes: random}}
"""))
    (student,) = config.model.students
    assert student.backbone.arch == "tiny" and student.backbone.skips != "value"  # nothing of loveda's clip
    assert student.backbone.layers != [0, 4]


def test_another_backbone_kind_starts_from_its_defaults_and_says_so(tmp_path):
    path = _write(tmp_path, """
base: [demo, models/co2s-tiny]
model:
  students:
    - name: clip
      backbone: {kind: dinov3, arch: tiny}
      guidance: queries
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(path)
    assert any("changes backbone.kind clip -> dinov3" in str(w.message) for w in caught)
    assert config.model.students[0].backbone.kind == "dinov3"
    assert config.model.students[0].backbone.skips != "value"  # the CLIP student's value skips are gone


def test_another_model_name_replaces_the_model_section(tmp_path, capsys):
    config = load_config(_write(tmp_path, "base: demo\nmodel: {name: lite_unet, width: 16}\ntrain: {method: supervised}\n"))
    assert config.model.name == "lite_unet" and config.model.width == 16
    back = load_config(_write(tmp_path, """
base: mine.yaml
model:
  name: students
  students: [{name: dino, backbone: {kind: dinov3, arch: tiny}}]
""", "back.yaml"))
    assert [s.name for s in back.model.students] == ["dino"]
    assert main(["presets", _write(tmp_path, "base: demo\nmodel: {name: lite_unet, width: 16}\n"
                                   "train: {method: supervised}\n", "p.yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["width"] == 16


@pytest.mark.parametrize("students,message", [
    ("[{backbone: {weights: x}}]", "every student needs a name"),
    ("[{name: dino, $patch: merge}]", "not 'merge'"),
    ("[{name: vit, $patch: delete}]", "cannot delete student 'vit': the base has \\['clip', 'dino'\\]"),
    ("[{name: clip}, {name: clip}]", "a student name appears twice"),
])
def test_bad_student_patches_are_refused_naming_the_file(tmp_path, students, message):
    path = _write(tmp_path, f"base: [demo, models/co2s-tiny]\nmodel:\n  students: {students}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(info.value).startswith(path)


def test_a_model_preset_among_the_bases_swaps_the_whole_model():
    """`preset: [demo, models/co2s-tiny]`: the tiny pair as it is, nothing of the demo's CNN student."""
    config = load_config(["demo", "models/co2s-tiny"])
    tiny = load_config(["ai4mars", "models/co2s-tiny"], {"train.method": "co2s", "data.splits.unlabelled": "u.txt"})
    assert config.model == tiny.model
    assert [s.backbone.kind for s in config.model.students] == ["clip", "dinov3"]


def test_a_folder_named_like_a_preset_never_shadows_it(tmp_path, monkeypatch):
    """`co2s demo --out demo` makes demo/; `co2s train ai4mars` next to a folder ai4mars/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo" / "data").mkdir(parents=True)
    (tmp_path / "ai4mars").mkdir()
    assert load_config("demo").name == "demo"
    assert load_config("ai4mars").name == "ai4mars"
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match=r"unknown preset 'mine' \(mine here is a folder, not a config file\)"):
        load_config("mine")
    with pytest.raises(ConfigError, match=r"config file not found: mine.yaml$"):
        load_config("mine.yaml")


def test_what_a_config_changes_in_its_preset_model_is_listed(tmp_path):
    from co2s.config.loader import changes_against_preset

    path = _write(tmp_path, """
base: loveda
model:
  students:
    - name: clip
      backbone: {weights: /weights/ViT-B-16.pt, skips: hidden}
""")
    preset, changes = changes_against_preset(path, load_config(path))
    assert preset == "loveda"
    assert changes == ["model.students.0.backbone.skips: 'value' -> 'hidden'",
                       "model.students.0.backbone.weights: 'openai/clip-vit-base-patch16' -> '/weights/ViT-B-16.pt'"]
    assert changes_against_preset("loveda", load_config("loveda")) == ("loveda", [])
    own = _write(tmp_path, "name: x\ndata: {classes: [a, b]}\ntrain: {iters: 3}\n", "own.yaml")
    assert changes_against_preset(own, load_config(own)) == (None, [])


def test_presets_diff_and_train_show_the_model_changes(tmp_path, capsys):
    path = _write(tmp_path, "base: loveda\nmodel:\n  students:\n    - {name: clip, guidance: queries}\n")
    assert main(["presets", path, "--diff", "--set", "model.students.dino.head=deeplabv3plus"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["the model differs from preset loveda's:",
                                "  model.students.0.guidance: 'text' -> 'queries'",
                                "  model.students.1.head: 'vlg' -> 'deeplabv3plus'"]
    assert main(["presets", "loveda", "--diff"]) == 0
    assert capsys.readouterr().out == "the model is preset loveda's as it is\n"
    plain = _write(tmp_path, "base: [demo, models/co2s-tiny]\nname: mine\n", "plain.yaml")
    assert main(["presets", plain, "--diff"]) == 0
    assert capsys.readouterr().out == "the model is preset models/co2s-tiny's as it is\n"
