"""Relative paths in a config file resolve against the file's folder (co2s.config.paths)."""

import warnings

import pytest

from co2s.config.loader import config_to_dict, load_config, validate
from co2s.config.migrate import Co2sDeprecationWarning


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory that is not the config's folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _config(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mine.yaml"
    path.write_text("base: demo\n" + text)
    return path


def test_data_root_and_out_dir_resolve_against_the_file_from_any_working_directory(tmp_path, elsewhere):
    (tmp_path / "project" / "data").mkdir(parents=True)
    path = _config(tmp_path / "project", "data: {root: data}\nout_dir: runs/mine\n")
    config = load_config(str(path))
    assert config.data.root == str(tmp_path / "project" / "data")
    assert config.out_dir == str(tmp_path / "project" / "runs" / "mine")
    # the stored config keeps the resolved paths: read back from anywhere, it means the same
    assert validate(config_to_dict(config)).data.root == config.data.root


def test_a_config_written_for_the_working_directory_keeps_working_and_says_so(tmp_path, elsewhere):
    (elsewhere / "data").mkdir()
    path = _config(tmp_path / "project", "data: {root: data}\n")
    with pytest.warns(Co2sDeprecationWarning) as caught:
        config = load_config(str(path))
    assert config.data.root == str(elsewhere / "data")
    message = str(caught[0].message)
    assert "'data'" in message and str(elsewhere / "data") in message and str(tmp_path / "project" / "data") in message


def test_a_missing_data_root_is_named_written_and_resolved(tmp_path, elsewhere):
    path = _config(tmp_path / "project", "data: {root: nowhere}\n")
    with pytest.warns(UserWarning, match=r"data.root 'nowhere' resolves to .*project/nowhere .*does not exist"):
        load_config(str(path))


def test_weights_beside_the_file_resolve_and_hub_ids_stay(tmp_path, elsewhere):
    project = tmp_path / "project"
    (project / "weights").mkdir(parents=True)
    (project / "weights" / "ViT-B-16.pt").write_bytes(b"")
    path = _config(project, """model:
  students:
    - {name: clip, backbone: {weights: weights/ViT-B-16.pt}}
    - name: cnn
""")
    (student, _) = load_config(str(path)).model.students
    assert student.backbone.weights == str(project / "weights" / "ViT-B-16.pt")
    loveda = project / "loveda.yaml"
    loveda.write_text("base: loveda\nmodel:\n  students:\n    - {name: clip, backbone: {weights: openai/clip-vit-base-patch16}}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(str(loveda)).model.students[0].backbone.weights == "openai/clip-vit-base-patch16"


def test_set_values_and_packaged_presets_resolve_against_the_working_directory(tmp_path, elsewhere):
    path = _config(tmp_path / "project", "")
    assert load_config(str(path), ["data.root=here"]).data.root == "here"
    assert load_config("demo").data.root == "demo_output/data"
