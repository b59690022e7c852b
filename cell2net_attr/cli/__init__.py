"""The ``cell2net-attr`` command line: :data:`app` and the console-script entry point :func:`main`."""

from .app import app, main

__all__ = ["app", "main"]
