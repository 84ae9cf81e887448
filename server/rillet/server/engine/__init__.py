"""Engines: one protocol, several backends (synthetic for tests; real ones for serving)."""
