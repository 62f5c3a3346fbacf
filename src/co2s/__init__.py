"""co2s: semi-supervised semantic segmentation of remote-sensing imagery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("co2s")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
