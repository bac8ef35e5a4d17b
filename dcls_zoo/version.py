"""The package version, in a module of its own so that every room can import it without importing
the package root (``pyproject.toml`` reads it from here)."""

__version__ = "0.2.0"
