"""The installed package's version, for records written by the package (run info, model folders,
ONNX metadata): modules inside the package read it here, never from the ``co2s`` facade."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("co2s")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
