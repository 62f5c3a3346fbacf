"""The real WHDLD format: palette PNG masks with values 1..6, read with reduce_zero_label."""

import numpy as np

from co2s.config.loader import load_config
from co2s.data.dataset import SampleReader
from co2s.data.sources import read_split
from tests.conftest import shared_dataset


def test_whdld_sample_loads_into_0_to_5_plus_ignore(tmp_path):
    root = shared_dataset("whdld-sample")
    (tmp_path / "list.txt").write_text("Images/wh0001.jpg ImagesPNG/wh0001.png\n")
    config = load_config("whdld", [f"data.root={root}", f"data.splits.labelled={tmp_path / 'list.txt'}"])
    samples = read_split(config.data.splits.labelled, config.data, labelled=True)
    image, mask = SampleReader(config.data).pair(samples[0])
    assert image.shape == (3, 256, 256) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    values = set(np.unique(mask.numpy()).tolist())
    assert values <= set(range(6)) | {255}
    # the README says this sample holds raw indices 2, 4 and 6: road, vegetation, water
    assert values - {255} == {1, 3, 5}
