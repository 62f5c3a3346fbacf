"""Fixtures of the inference tests."""

from __future__ import annotations

import pytest

from tests.inference.scenes import train_colour_reader


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny lite_unet trained for a few seconds to read the class colours of
    :func:`tests.inference.scenes.synthetic_scene`: its checkpoint, config and model."""
    return train_colour_reader(tmp_path_factory.mktemp("model"))
