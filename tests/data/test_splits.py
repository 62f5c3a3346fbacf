import subprocess
import sys

import pytest

from co2s.data.sources import Sample
from co2s.data.splits import choose_labelled, make_splits, parse_ratio
from co2s.errors import DataError
from tests.conftest import shared_dataset


def test_parse_ratio():
    assert parse_ratio("1/8") == 0.125 and parse_ratio("0.25") == 0.25
    for bad in ("0", "1", "3/2", "abc", "1/0"):
        with pytest.raises(DataError):
            parse_ratio(bad)


def test_choose_labelled_is_seeded_and_sized():
    a = choose_labelled(100, 1 / 8, seed=3)
    assert a == choose_labelled(100, 1 / 8, seed=3) and len(a) == round(100 / 8)
    assert a != choose_labelled(100, 1 / 8, seed=4)
    with pytest.raises(DataError, match="leaves no unlabelled"):
        choose_labelled(1, 0.9, 0)


def test_stratified_keeps_class_shares():
    strata = [0] * 80 + [1] * 16 + [2] * 4
    chosen = choose_labelled(100, 0.25, seed=0, strata=strata)
    counts = [sum(strata[i] == k for i in chosen) for k in range(3)]
    assert counts == [20, 4, 1]


def test_make_splits_writes_disjoint_files_identically(tmp_path):
    samples = [Sample(tmp_path / f"{i}.png", None, f"l:{i}", f"img_{i}") for i in range(40)]
    make_splits(samples, "1/4", 1, tmp_path / "a")
    make_splits(samples, "1/4", 1, tmp_path / "b")
    for name in ("labelled.txt", "unlabelled.txt", "split.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lab = (tmp_path / "a/labelled.txt").read_text().splitlines()
    unl = (tmp_path / "a/unlabelled.txt").read_text().splitlines()
    assert len(lab) == 10 and len(unl) == 30 and not set(lab) & set(unl)
    assert sorted(lab + unl) == sorted(s.entry for s in samples)
    dup = samples + [samples[3]]
    with pytest.raises(DataError, match="listed more than once"):
        make_splits(dup, "1/4", 1, tmp_path / "c")


def test_cli_splits_on_ai4mars_twice_identical(tmp_path):
    root = shared_dataset("ai4mars-msl-256")
    train = (root / "splits" / "train.txt").read_text().split()
    outs = []
    for name in ("one", "two"):
        subprocess.run(
            [sys.executable, "-m", "co2s.cli.main", "splits", str(root / "splits/train.txt"),
             "--ratio", "1/8", "--seed", "0", "--out", str(tmp_path / name)],
            check=True, capture_output=True,
        )
        outs.append([(tmp_path / name / f).read_bytes() for f in ("labelled.txt", "unlabelled.txt")])
    assert outs[0] == outs[1]
    lab = outs[0][0].decode().split()
    unl = outs[0][1].decode().split()
    assert len(lab) + len(unl) == len(train) and not set(lab) & set(unl)
    assert set(lab) | set(unl) == set(train) and len(lab) == round(len(train) / 8)


def test_cli_stratified_splits_with_config(tmp_path):
    root = shared_dataset("ai4mars-msl-256")
    lines = (root / "splits" / "train.txt").read_text().split()[:80]
    (tmp_path / "small.txt").write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "co2s.cli.main", "splits", str(tmp_path / "small.txt"), "--config", "ai4mars",
         "--set", f"data.root={root}", "--ratio", "1/4", "--seed", "0", "--stratify", "--out", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "s/labelled.txt").read_text().split()) == 20


def test_splits_of_a_folder_read_back_under_the_same_root(tmp_path):
    """A folder split (``train/images`` + ``train/masks`` under ``data.root``) gives lines relative
    to the data root, so the written list trains under the same config (they were relative to the
    folder, ``images/x.png``, and not found under the root)."""
    from co2s.config.loader import load_config
    from co2s.data.sources import read_split
    from co2s.data.splits import split_source
    from tests.conftest import tiny_config_dict, write_tiny_dataset

    root = tmp_path / "data"
    write_tiny_dataset(root / "train", n=8)
    raw = tiny_config_dict(root, tmp_path / "run")
    raw["data"]["splits"] = {"train": "train", "labelled": "train"}
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(raw))
    data = load_config(str(tmp_path / "c.yaml")).data
    samples, encoder, _ = split_source(None, data)
    make_splits(samples, "1/4", 0, tmp_path / "s", encoder=encoder)
    lines = (tmp_path / "s" / "labelled.txt").read_text().split("\n")[0].split()
    assert lines[0].startswith("train/images/") and lines[1].startswith("train/masks/")
    back = read_split(str(tmp_path / "s" / "labelled.txt"), data, labelled=True)
    assert {s.image for s in back} <= {s.image for s in samples} and len(back) == 2
