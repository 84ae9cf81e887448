"""piper's espeak-ng bridge, mended: piper-tts 1.8.0 leaks every clause it phonemizes (fixed here when it does)."""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Clause = tuple[str, str, bool]  # (phonemes, terminator, end of sentence)

_decref = ctypes.pythonapi.Py_DecRef
_decref.argtypes = [ctypes.py_object]
_decref.restype = None


def _references_in_a_list() -> int:
    """What sys.getrefcount says of a tuple held by a list alone (the interpreter's own count for this shape)."""
    held = [(str(len("phonemes")), "", False)]
    return sys.getrefcount(held[0])


class MendedGetPhonemes:
    """`espeakbridge.get_phonemes`, releasing the reference it leaks on each clause, if the build leaks it.

    piper-tts 1.8.0's `py_get_phonemes` (espeakbridge.c) passes the new reference `Py_BuildValue` returns straight to
    `PyList_Append`, which takes a reference of its own, and never releases the first: every clause tuple and its two
    strings outlive the list (about 460 bytes a segment; found by a tracemalloc diff of a 25-minute soak, where this
    site alone grew 0.96 MB). The first result tells whether this build leaks: a clause referenced exactly once more
    than a list accounts for is released once (Py_DecRef), so the list holds the only reference, as it should. A
    build without the leak is passed through untouched.
    """

    def __init__(self, original: Callable[[str], list[Clause]]) -> None:
        self.original = original
        self.leaks: bool | None = None  # decided by the first call that returns a clause

    def __call__(self, text: str) -> list[Clause]:
        clauses = self.original(text)
        if self.leaks is None and clauses:
            self.leaks = sys.getrefcount(clauses[0]) == _references_in_a_list() + 1
            if self.leaks:
                log.info("piper's espeakbridge leaks each phonemized clause: releasing the extra reference")
        if self.leaks:
            for clause in clauses:
                _decref(clause)
        return clauses


def mend_get_phonemes() -> None:
    """Put MendedGetPhonemes in place of piper's `espeakbridge.get_phonemes` (once; piper looks it up per call)."""
    try:
        from piper import espeakbridge
    except ImportError:  # a piper without the bridge: nothing to mend
        return
    current: Any = getattr(espeakbridge, "get_phonemes", None)
    if current is None or isinstance(current, MendedGetPhonemes):
        return
    espeakbridge.get_phonemes = MendedGetPhonemes(current)
