"""The installed package's version, for the CLI and the files that record their producer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeadapt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
