"""Each distinct warning once per call of a command or API function. Python's own once-per-location
rule does not hold in this package: libraries (rasterio) reset the warning filters, which forgets
what was shown, so a per-file warning (an alpha band read as validity, say) would repeat for every
image of a dataset."""

from __future__ import annotations

import contextlib
import functools
import warnings


@contextlib.contextmanager
def each_warning_once(show=None):
    """Within the block, a warning whose category and message were shown already is dropped; the
    others go to ``show`` (a ``warnings.showwarning``; default: the one in force), so filters
    and ``catch_warnings(record=True)`` outside still see them."""
    shown: set[tuple[type, str]] = set()
    with warnings.catch_warnings():
        forward = show or warnings.showwarning

        def once(message, category, filename, lineno, file=None, line=None) -> None:
            key = (category, str(message))
            if key not in shown:
                shown.add(key)
                forward(message, category, filename, lineno, file, line)

        warnings.showwarning = once
        yield


def warning_once_per_call(func):
    """Decorator: :func:`each_warning_once` around each call of ``func``."""
    @functools.wraps(func)
    def call(*args, **kwargs):
        with each_warning_once():
            return func(*args, **kwargs)
    return call
