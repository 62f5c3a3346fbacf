"""Training methods on one engine, chosen by ``train.method``."""

from co2s.methods.base import Method
from co2s.methods.co2s import Co2S
from co2s.methods.fixmatch import FixMatch
from co2s.methods.schedule import Schedule
from co2s.methods.supervised import Supervised
from co2s.methods.unimatch import UniMatch

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised, "fixmatch": FixMatch, "unimatch": UniMatch, "co2s": Co2S,
}


def build_method(config, lr_scale: float = 1.0) -> Method:
    return METHODS[config.train.method](config, lr_scale)


__all__ = ["METHODS", "Method", "Schedule", "build_method"]
