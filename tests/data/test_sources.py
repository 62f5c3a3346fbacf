import numpy as np
import pytest
from PIL import Image

from co2s.config.loader import validate
from co2s.data.labels import LabelEncoder
from co2s.data.sources import check_disjoint, read_list_file, read_split, validate_samples
from co2s.errors import DataError
from tests.conftest import tiny_config_dict


def _data(root, **extra):
    cfg = tiny_config_dict(root, root / "run")
    cfg["data"].update(extra)
    return validate(cfg).data


def test_paper_style_list(tiny_dataset):
    samples = read_split("train.txt", _data(tiny_dataset), labelled=True)
    assert len(samples) == 4
    assert samples[0].image == tiny_dataset / "images/t0.png"
    assert samples[0].mask == tiny_dataset / "masks/t0.png"
    assert samples[1].origin.endswith("train.txt:2")


def test_id_lists_and_unlabelled_lists(tiny_dataset):
    (tiny_dataset / "ids.txt").write_text("t0\nt3\n")
    data = _data(tiny_dataset, id_format={"image": "images/{id}.png", "mask": "masks/{id}.png"})
    samples = read_split("ids.txt", data, labelled=True)
    assert [s.mask.name for s in samples] == ["t0.png", "t3.png"]
    (tiny_dataset / "unl.txt").write_text("images/t1.png\n# comment\n\nimages/t2.png masks/t2.png\n")
    unl = read_split("unl.txt", _data(tiny_dataset), labelled=False)
    assert [s.mask for s in unl] == [None, None]  # masks of unlabelled lines are never used


def test_folder_layouts(tiny_dataset):
    data = _data(tiny_dataset)
    labelled = read_split(str(tiny_dataset), data, labelled=True)
    assert len(labelled) == 6 and all(s.mask.stem == s.image.stem for s in labelled)
    assert len(read_split("images", data, labelled=False)) == 6
    (tiny_dataset / "masks" / "t5.png").unlink()
    with pytest.raises(DataError, match=r"no mask for 1 image\(s\): t5\.png"):
        read_split(str(tiny_dataset), data, labelled=True)


def test_list_file_errors_name_file_and_line(tiny_dataset):
    (tiny_dataset / "bad.txt").write_text("images/t0.png masks/t0.png\na b c\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: expected 'image \[mask\]', got 3 fields"):
        read_list_file(tiny_dataset / "bad.txt", tiny_dataset)
    (tiny_dataset / "nomask.txt").write_text("images/t0.png\n")
    with pytest.raises(DataError, match=r"nomask\.txt:1: no mask for a labelled sample"):
        read_split("nomask.txt", _data(tiny_dataset), labelled=True)
    (tiny_dataset / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match=r"data\.splits\.labelled: .*empty\.txt lists no samples"):
        read_split("empty.txt", _data(tiny_dataset), labelled=True, name="labelled")
    with pytest.raises(DataError, match=r"missing\.txt does not exist"):
        read_split("missing.txt", _data(tiny_dataset), labelled=True)


def test_validation_finds_missing_files_mismatched_sizes_and_bad_values(tiny_dataset):
    data = _data(tiny_dataset)
    enc = LabelEncoder.from_config(data)
    (tiny_dataset / "l.txt").write_text("images/t0.png masks/t0.png\nimages/gone.png masks/t1.png\n")
    with pytest.raises(DataError, match=r"l\.txt:2: image not found: .*gone\.png"):
        validate_samples(read_split("l.txt", data, True), enc, "exists")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tiny_dataset / "masks" / "small.png")
    (tiny_dataset / "l.txt").write_text("images/t0.png masks/small.png\n")
    with pytest.raises(DataError, match=r"l\.txt:1: image t0\.png is 48x48 but mask small\.png is 10x10"):
        validate_samples(read_split("l.txt", data, True), enc, "full")
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(tiny_dataset / "masks" / "nine.png")
    (tiny_dataset / "l.txt").write_text("images/t0.png masks/nine.png\n")
    with pytest.raises(DataError, match=r"nine\.png \(listed at .*l\.txt:1\): label value\(s\) 9"):
        validate_samples(read_split("l.txt", data, True), enc, "full")


def test_labelled_and_unlabelled_must_not_overlap(tiny_dataset):
    data = _data(tiny_dataset)
    (tiny_dataset / "u.txt").write_text("images/t5.png\nimages/t2.png\n")
    with pytest.raises(DataError, match=r"1 image\(s\) are both labelled and unlabelled, e\.g\. t2\.png"):
        check_disjoint(read_split("train.txt", data, True), read_split("u.txt", data, False))


def test_split_lists_written_by_co2s_splits_work_from_the_working_folder(tiny_dataset, tmp_path, monkeypatch):
    """`co2s splits --out splits/x` writes into the working folder; the config names the lists as
    written, relative, and they are found there when data.root does not hold them."""
    from co2s.cli.main import main
    from co2s.config.loader import validate
    from co2s.data.sources import read_split
    from tests.conftest import tiny_config_dict

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["splits", str(tiny_dataset / "train.txt"), "--root", str(tiny_dataset), "--ratio", "1/2",
                 "--out", "splits/half"]) == 0
    cfg = tiny_config_dict(tiny_dataset, work / "run")
    cfg["data"]["splits"]["labelled"] = "splits/half/labelled.txt"
    samples = read_split("splits/half/labelled.txt", validate(cfg).data, labelled=True)
    assert len(samples) == 2 and all(s.image.is_file() and s.mask.is_file() for s in samples)


#: the start of an AppleDouble file (macOS's "._name" beside each file copied to a FAT/exFAT drive
#: or network share): magic, version, filler, one entry (Finder info)
APPLE_DOUBLE = (b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x01"
                + b"\x00\x00\x00\x09\x00\x00\x00\x32\x00\x00\x00\x20" + b"\x00" * 32)


def test_hidden_files_beside_the_images_are_not_data(tiny_dataset, tmp_path):
    """A folder copied from a Mac holds ``._t0.png`` beside ``t0.png`` (and a ``.DS_Store``): the
    folder's samples and ``co2s predict FOLDER`` leave them out, as a shell glob does, instead of
    failing on "no mask for ._t0.png" or an unreadable image."""
    from co2s.inference.predict import expand_inputs

    data = _data(tiny_dataset)
    before = read_split(str(tiny_dataset), data, labelled=True)
    for sub in ("images", "masks"):
        for name in ("._t0.png", "._t3.png"):
            (tiny_dataset / sub / name).write_bytes(APPLE_DOUBLE)
        (tiny_dataset / sub / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    after = read_split(str(tiny_dataset), data, labelled=True)
    assert [(s.image, s.mask) for s in after] == [(s.image, s.mask) for s in before]
    assert len(read_split("images", data, labelled=False)) == len(before)
    assert expand_inputs([str(tiny_dataset / "images")]) == [s.image for s in before]


def test_a_list_saved_by_windows_notepad_reads(tiny_dataset):
    """UTF-8 with a byte-order mark, CRLF line ends and backslashes between folders (a list written
    on Windows: Notepad, Excel's "CSV UTF-8"): the mark does not join the first path, the line ends
    do not join the last, and the folders are found."""
    (tiny_dataset / "notepad.txt").write_bytes("\ufeffimages/t0.png masks/t0.png\r\nimages\\t3.png masks\\t3.png\r\n"
                                               .encode("utf-8"))  # and Windows' folder separator
    samples = read_split("notepad.txt", _data(tiny_dataset), labelled=True)
    assert [(s.image.name, s.mask.name) for s in samples] == [("t0.png", "t0.png"), ("t3.png", "t3.png")]
    assert all(s.image.is_file() and s.mask.is_file() for s in samples)


def test_paths_with_spaces_round_trip_through_the_split_lists(tiny_dataset, tmp_path):
    """Windows names a copy ``t0 (1).png``. A folder of such files splits into lists whose lines
    quote those paths, and the lists read back to the same files; an unquoted line with spaces
    says how to write it."""
    from co2s import api

    root = tmp_path / "my survey"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for i in range(4):
            (root / sub / f"tile ({i}).png").write_bytes((tiny_dataset / sub / f"t{i}.png").read_bytes())
    data = _data(root, splits={"train": "."})
    folder = read_split(".", data, labelled=True)
    assert [s.image.name for s in folder] == [f"tile ({i}).png" for i in range(4)]
    assert folder[0].entry == '"images/tile (0).png" "masks/tile (0).png"'
    api.make_splits(str(root), "1/2", 0, tmp_path / "splits", root=str(root))
    back = [s for name in ("labelled.txt", "unlabelled.txt")
            for s in read_split(str(tmp_path / "splits" / name), data, labelled=True)]
    assert sorted((s.image, s.mask) for s in back) == sorted((s.image, s.mask) for s in folder)
    (root / "bad.txt").write_text("images/tile (0).png masks/tile (0).png\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected 'image \[mask\]', got 4 fields: .*double quotes"):
        read_split("bad.txt", data, labelled=True)
