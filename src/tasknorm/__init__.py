"""tasknorm: multi-task learning and compact networks built on normalization layers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tasknorm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
