"""Where the harnesses write: bench/results/ of the checkout this package runs from, a JSON and a Markdown file a run.

The harnesses run from a checkout (`make install` installs this package editable from server/), so the checkout's
folders are found from this file: bench/results/ for results, bench/.build/ for built peers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "bench" / "results"
BUILD = ROOT / "bench" / ".build"
BIN = Path(sys.executable).parent
"""Where the `rillet` command of this environment is."""


def stamp(*tags: str) -> str:
    """A result file's time stamp, then its tags (a tagged file is an experiment: perf_readme takes untagged ones)."""
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), *(tag for tag in tags if tag)])


def write_results(name: str, results: Any, text: str, *tags: str, directory: Path = RESULTS, echo: bool = True) -> Path:
    """<directory>/<name>_<time>[-<tags>].json and .md; print `text` (with `echo`) and where they went."""
    base = directory / f"{name}_{stamp(*tags)}"
    directory.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    base.with_suffix(".md").write_text(text, encoding="utf-8")
    if echo:
        print(text)
    print(f"wrote {base}.json and .md")
    return base
