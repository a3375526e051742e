"""shopcast: a live-commerce media server.

The package is split by concern: ``shopcast.server`` (the trio runtime),
``shopcast.codecs`` (the media core), ``shopcast.plugins`` and
``shopcast.bench``. This top level only carries the version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shopcast")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
