"""Evaluation: metrics of what the Segmenter predicts (:mod:`.run`, ``co2s evaluate``).

The metrics file of a split is named here, in one place, for the writers and every reader."""

from __future__ import annotations

#: ``co2s evaluate --split SPLIT`` writes ``metrics_<SPLIT>.json`` (one file per split)
METRICS_FILE = "metrics_{split}.json"


def metrics_file(split: str) -> str:
    """The file name of the metrics of ``split``: ``metrics_test.json``, ``metrics_val.json``, ..."""
    return METRICS_FILE.format(split=split)
