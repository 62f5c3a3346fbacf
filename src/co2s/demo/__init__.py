"""The built-in demo, ``co2s demo``: seeded synthetic aerial scenes (:mod:`.synthetic`), then
train, evaluate and predict in one output folder (:mod:`.run`).

:func:`run_demo` is loaded on first use, so ``co2s.demo.synthetic`` imports without the training
engine.
"""

from __future__ import annotations

__all__ = ["reference_scores", "run_demo", "write_demo_dataset"]


def __getattr__(name: str):
    if name == "write_demo_dataset":
        from co2s.demo.synthetic import write_demo_dataset

        return write_demo_dataset
    if name in __all__:
        from co2s.demo import run

        return getattr(run, name)
    raise AttributeError(f"module 'co2s.demo' has no attribute {name!r}")
