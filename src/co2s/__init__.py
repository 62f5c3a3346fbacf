"""co2s: semi-supervised semantic segmentation of remote-sensing imagery.

The public API (:mod:`co2s.api`) is loaded on first use, so ``import co2s`` and ``co2s --help``
stay fast: ``co2s.load_config``, ``co2s.train`` (-> ``co2s.Run``), ``co2s.evaluate``,
``co2s.predict``, ``co2s.export``, ``co2s.make_splits`` and ``co2s.Segmenter``.
"""

from __future__ import annotations

from co2s.version import __version__

#: the names of ``co2s.api.__all__`` (a test holds them equal), loaded from the api on first use
_API = ("Prediction", "PredictOptions", "PredictionResult", "Run", "Segmenter", "embed_text", "evaluate",
        "evaluate_checkpoint", "export", "load_config", "make_splits", "model_summary", "predict", "preset",
        "prepare", "presets", "report", "suggest", "train")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from co2s import api

        return getattr(api, name)
    raise AttributeError(f"module 'co2s' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
