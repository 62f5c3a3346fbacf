"""Training methods on one engine, chosen by ``train.method``."""

from co2s.methods.base import Method
from co2s.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {"supervised": Supervised}


def build_method(config) -> Method:
    return METHODS[config.train.method](config)


__all__ = ["METHODS", "Method", "build_method"]
