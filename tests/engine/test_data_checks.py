"""Up-front data checks of a training run (its data module, ``co2s.data.module``) and of ``co2s evaluate``:
a wrong input stops the run before training with one message naming the file and list line."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from co2s.config.loader import validate
from co2s.data.module import data_module
from co2s.api import train
from co2s.errors import DataError
from co2s.evaluation.run import evaluate_checkpoint
from tests.conftest import tiny_config_dict


def _training_data(config):
    """What a training run reads and checks before its first step."""
    return data_module(config.data, config.in_channels).setup_training(config.train, config.uses_unlabelled)

PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def _config(root, tmp_path, **data):
    cfg = tiny_config_dict(root, tmp_path / "run")
    cfg["data"].update(data)
    return validate(cfg)


def _colour_dataset(root, n=4, size=32, extra=None):
    """RGB colour-coded masks as annotation tools export them (one PNG per image)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        labels = np.zeros((size, size), int)
        labels[:, size // 3 :] = 1
        labels[:, 2 * size // 3 :] = 2
        rgb = np.asarray(PALETTE, np.uint8)[labels]
        if extra is not None:
            extra(i, rgb)
        Image.fromarray(rgb).save(root / "masks" / f"m{i}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"m{i}.png")
        lines.append(f"images/m{i}.png masks/m{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text(lines[0] + "\n")
    return root


# -- 4: labels of the labelled split ----------------------------------------------------------

def test_palette_typo_stops_the_run_naming_class_file_share_and_colour(tmp_path, capsys):
    root = _colour_dataset(tmp_path / "data")
    typo = [[255, 0, 0], [0, 250, 0], [0, 0, 255]]  # green mistyped in the config
    config = _config(root, tmp_path, color_masks=True, palette=typo)
    with pytest.raises(DataError) as err:
        _training_data(config)
    message = str(err.value)
    assert "c1" in message and "no pixel" in message
    assert "m0.png" in message and "train.txt:1" in message
    assert "(0, 255, 0)" in message and "%" in message
    assert "label_check: warn" in message
    table = capsys.readouterr().out
    assert "c0" in table and "c1" in table  # the per-class table is printed either way


def test_label_check_warn_lets_the_run_go_on_and_the_table_is_printed(tmp_path, capsys):
    root = _colour_dataset(tmp_path / "data")
    typo = [[255, 0, 0], [0, 250, 0], [0, 0, 255]]
    config = _config(root, tmp_path, color_masks=True, palette=typo, label_check="warn")
    data = _training_data(config)
    assert len(data.labelled) == 4
    out = capsys.readouterr()
    assert "c1" in out.err and "(0, 255, 0)" in out.err  # the warning, on stderr
    assert "c1" in data.class_table and data.class_table in out.out


def test_a_few_unmatched_pixels_pass_and_ignore_colours_are_not_unmatched(tmp_path):
    def edges(i, rgb):  # anti-aliased edge pixels: 0.4 % of the mask
        rgb[0, :4] = (128, 128, 0)

    root = _colour_dataset(tmp_path / "a", extra=edges)
    _training_data(_config(root, tmp_path, color_masks=True, palette=PALETTE))

    def border(i, rgb):  # a black "no label" border: 6 % of the mask
        rgb[:2] = 0

    root = _colour_dataset(tmp_path / "b", extra=border)
    with pytest.raises(DataError, match=r"(?s)m0\.png.*6\.2 % unmatched, \(0, 0, 0\)"):
        _training_data(_config(root, tmp_path, color_masks=True, palette=PALETTE))
    _training_data(_config(root, tmp_path, color_masks=True, palette=PALETTE, ignore_colors=[[0, 0, 0]]))
    # a higher threshold also lets it through
    _training_data(_config(root, tmp_path, color_masks=True, palette=PALETTE, max_unmatched_colors=0.2))


def test_a_class_absent_from_the_labelled_split_stops_the_run(tiny_dataset, tmp_path):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", classes=4)  # masks hold 0..2 only
    with pytest.raises(DataError, match=r"c3.*no pixel in the labelled split"):
        _training_data(validate(cfg))
    cfg["data"]["label_check"] = "warn"
    _training_data(validate(cfg))


# -- 6: band counts ---------------------------------------------------------------------------

def test_band_count_mismatch_in_any_split_names_file_line_and_bands(tiny_dataset, tmp_path):
    images = tiny_dataset / "images"
    Image.open(images / "t1.png").convert("L").save(images / "grey.png")
    Image.open(images / "t2.png").convert("LA").save(images / "grey_alpha.png")
    with rasterio.open(images / "four.tif", "w", driver="GTiff", height=48, width=48, count=4,
                       dtype="uint8", photometric="MINISBLACK") as dst:
        dst.write(np.zeros((4, 48, 48), np.uint8))
    (tiny_dataset / "lab.txt").write_text("images/t0.png masks/t0.png\nimages/grey.png masks/t1.png\n")
    (tiny_dataset / "unl.txt").write_text("images/t5.png\nimages/grey_alpha.png\n")
    (tiny_dataset / "v.txt").write_text("images/four.tif masks/t4.png\n")

    config = _config(tiny_dataset, tmp_path, splits={"labelled": "lab.txt"})
    with pytest.raises(DataError, match=r"lab\.txt:2: image .*grey\.png has 1 band.* expects 3.*data\.bands"):
        _training_data(config)
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", method="fixmatch")
    cfg["data"]["splits"] = {"labelled": "train.txt", "unlabelled": "unl.txt"}
    with pytest.raises(DataError, match=r"unl\.txt:2: image .*grey_alpha\.png has 1 band\(s\) \(and 1 alpha band\(s\), "
                                        r"read as which pixels hold data\) but the config expects 3"):
        _training_data(validate(cfg))
    config = _config(tiny_dataset, tmp_path, splits={"labelled": "train.txt", "val": "v.txt"})
    with pytest.raises(DataError, match=r"v\.txt:1: image .*four\.tif has 4 band.* expects 3.*data\.bands"):
        _training_data(config)
    # selecting bands that every image has is fine; a band an image lacks is named
    _training_data(_config(tiny_dataset, tmp_path, bands=[1, 2, 3],
                    splits={"labelled": "train.txt", "val": "v.txt"}))
    with pytest.raises(DataError, match=r"train\.txt:1: image .*t0\.png has 3 band.*data\.bands.*\[5\]"):
        _training_data(_config(tiny_dataset, tmp_path, bands=[1, 2, 5],
                        splits={"labelled": "train.txt", "val": "v.txt"}))


def test_alpha_bands_are_the_validity_unless_data_bands_chooses_them(tiny_dataset, tmp_path):
    """RGBA tiles (QGIS exports) train a 3-band model as they are; data.bands can pick the alpha
    band as a 4th band, and the data checks count it as one of the file's bands."""
    images = tiny_dataset / "images"
    lines = (tiny_dataset / "train.txt").read_text().splitlines()
    for line in lines:
        name = line.split()[0]
        Image.open(tiny_dataset / name).convert("RGBA").save(tiny_dataset / name.replace(".png", "_a.png"))
    (tiny_dataset / "rgba.txt").write_text("".join(
        f"{line.split()[0].replace('.png', '_a.png')} {line.split()[1]}\n" for line in lines))
    assert (images / "t0_a.png").is_file()
    with pytest.warns(UserWarning, match="alpha band"):
        _training_data(_config(tiny_dataset, tmp_path, splits={"labelled": "rgba.txt"}))
    four = _config(tiny_dataset, tmp_path, splits={"labelled": "rgba.txt"}, bands=[1, 2, 3, 4],
                   mean=[0.5] * 4, std=[0.25] * 4)
    assert four.in_channels == 4
    _training_data(four)


def test_evaluate_checks_band_counts_up_front(tiny_dataset, tmp_path):
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run", iters=1, val_every=1, ckpt_every=1)
    del cfg["data"]["splits"]["val"]
    train(validate(cfg), progress=False)
    images = tiny_dataset / "images"
    Image.open(images / "t4.png").convert("L").save(images / "grey.png")
    (tiny_dataset / "test.txt").write_text("images/t5.png masks/t5.png\nimages/grey.png masks/t4.png\n")
    cfg["data"]["splits"]["test"] = "test.txt"
    with pytest.raises(DataError, match=r"test\.txt:2: image .*grey\.png has 1 band.* expects 3.*data\.bands"):
        evaluate_checkpoint(tmp_path / "run" / "latest.ckpt", validate(cfg), split="test", device="cpu",
                            progress=False)


# -- 7: list files ----------------------------------------------------------------------------

def test_duplicate_lines_name_the_file_and_both_lines(tiny_dataset, tmp_path):
    (tiny_dataset / "lab.txt").write_text(
        "images/t0.png masks/t0.png\nimages/t1.png masks/t1.png\n./images/../images/t0.png masks/t0.png\n")
    config = _config(tiny_dataset, tmp_path, splits={"labelled": "lab.txt"})
    with pytest.raises(DataError, match=r"lab\.txt:3: .*t0\.png is listed twice \(lines 1 and 3\)"):
        _training_data(config)


def test_a_directory_given_as_image_or_mask_says_so(tiny_dataset, tmp_path):
    (tiny_dataset / "images" / "sub").mkdir()
    (tiny_dataset / "lab.txt").write_text("images/t0.png masks/t0.png\nimages/sub masks/t1.png\n")
    config = _config(tiny_dataset, tmp_path, splits={"labelled": "lab.txt"})
    with pytest.raises(DataError, match=r"lab\.txt:2: image .*sub is a directory"):
        _training_data(config)
    (tiny_dataset / "lab.txt").write_text("images/t0.png masks\n")
    with pytest.raises(DataError, match=r"lab\.txt:1: mask .*masks is a directory"):
        _training_data(config)


def test_overlap_is_checked_only_when_the_method_uses_the_unlabelled_list(tiny_dataset, tmp_path):
    (tiny_dataset / "unl.txt").write_text("images/t0.png\nimages/t5.png\n")  # t0 is labelled too
    cfg = tiny_config_dict(tiny_dataset, tmp_path / "run")
    cfg["data"]["splits"]["unlabelled"] = "unl.txt"
    data = _training_data(validate(cfg))  # supervised: not used, no error
    assert len(data.labelled) == 4 and data.unlabelled is None
    cfg["train"]["method"] = "fixmatch"
    with pytest.raises(DataError, match=r"both labelled and unlabelled"):
        _training_data(validate(cfg))
