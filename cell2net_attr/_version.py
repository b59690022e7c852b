"""The package version (one home, read by ``pyproject.toml`` and written into every output)."""

__version__ = "0.2.0"
