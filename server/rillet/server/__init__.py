"""The Rillet server: transport → session → scheduler → engine, each layer importing only downward."""

from __future__ import annotations

import importlib.metadata

__all__ = ["version"]


def version() -> str:
    """The installed rillet package's version ("0" in a source tree without the package)."""
    try:
        return importlib.metadata.version("rillet")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree without the package
        return "0"
