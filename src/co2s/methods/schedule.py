"""Where a step sits in its run: the run's length, the end of the supervised burn-in and the
steps that close a log window.

The trainer makes one :class:`Schedule` per run (the length depends on the data it read); the
methods, the checkpointing of ``burn_in.ckpt``, the run's record, the train records and the demo
all read it, so these step decisions are made in this one place."""

from __future__ import annotations

from dataclasses import dataclass

from co2s.config.schema import METHOD_FACTS


@dataclass(frozen=True)
class Schedule:
    """``total`` optimiser steps; steps ``0 .. burn_in - 1`` train on the labelled crops only;
    a train record every ``log_every`` steps and at the last."""

    total: int
    burn_in: int = 0
    log_every: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.burn_in <= self.total:
            raise ValueError(f"burn-in of {self.burn_in} steps in a run of {self.total}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be positive, got {self.log_every}")

    @classmethod
    def for_run(cls, config, total: int) -> Schedule:
        """The schedule of a ``total``-step run of ``config``: ``train.semi.burn_in`` (a fraction
        of the run, rounded; ``burn_in_steps`` when set, as in an extended run) for methods that
        use unlabelled images, none for the others."""
        semi = config.train.semi
        steps = int(round(semi.burn_in * total)) if semi.burn_in_steps is None else semi.burn_in_steps
        burn_in = min(total, steps) if METHOD_FACTS[config.train.method].uses_unlabelled else 0
        return cls(total, burn_in, config.train.log_every)

    def in_burn_in(self, step: int) -> bool:
        return step < self.burn_in

    def closes_log_window(self, step: int) -> bool:
        """Whether a train record is written after ``step`` (0-based)."""
        return (step + 1) % self.log_every == 0 or step + 1 == self.total

    def measures_unlabelled(self, step: int) -> bool:
        """Whether ``step`` forwards the unlabelled weak view: always once it trains on it; during
        the burn-in only on the step that closes each log window, for the diagnostics alone
        (confident ratio, pseudo-label accuracy, teaching shares). That forward, with no gradient,
        was about a quarter of every burn-in step's compute; each record still has its values."""
        return not self.in_burn_in(step) or self.closes_log_window(step)

    def after_burn_in(self, step: int) -> tuple[int, int]:
        """``(step, total)`` counted from the end of the burn-in (ramps start there)."""
        return step - self.burn_in, self.total - self.burn_in
