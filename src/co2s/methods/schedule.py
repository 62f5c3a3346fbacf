"""Where a step sits in its run: the run's length and the end of the supervised burn-in.

The trainer makes one :class:`Schedule` per run (the length depends on the data it read); the
methods, the checkpointing of ``burn_in.ckpt``, the run's record and the demo all read it, so the
burn-in is computed in this one place."""

from __future__ import annotations

from dataclasses import dataclass

from co2s.config.schema import METHOD_FACTS


@dataclass(frozen=True)
class Schedule:
    """``total`` optimiser steps; steps ``0 .. burn_in - 1`` train on the labelled crops only."""

    total: int
    burn_in: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.burn_in <= self.total:
            raise ValueError(f"burn-in of {self.burn_in} steps in a run of {self.total}")

    @classmethod
    def for_run(cls, config, total: int) -> Schedule:
        """The schedule of a ``total``-step run of ``config``: ``train.semi.burn_in`` (a fraction
        of the run, rounded; ``burn_in_steps`` when set, as in an extended run) for methods that
        use unlabelled images, none for the others."""
        semi = config.train.semi
        steps = int(round(semi.burn_in * total)) if semi.burn_in_steps is None else semi.burn_in_steps
        burn_in = min(total, steps) if METHOD_FACTS[config.train.method].uses_unlabelled else 0
        return cls(total, burn_in)

    def in_burn_in(self, step: int) -> bool:
        return step < self.burn_in

    def after_burn_in(self, step: int) -> tuple[int, int]:
        """``(step, total)`` counted from the end of the burn-in (ramps start there)."""
        return step - self.burn_in, self.total - self.burn_in
