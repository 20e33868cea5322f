"""edgeadapt: compiled edge-deployment toolchain for adaptive inference."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeadapt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
