"""What the deployment tests share: the repository's paths, the pinned helm, and checks of RILLET_* names."""

from __future__ import annotations

import os
import subprocess
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from rillet.server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "rillet"


def helm(*args: str) -> str:
    """Run the pinned helm that `make deploy-tools` builds into .tools/bin (RILLET_HELM overrides); its stdout."""
    binary = Path(os.environ.get("RILLET_HELM", ROOT / ".tools" / "bin" / "helm"))
    if not binary.is_file():
        pytest.fail(f"no helm at {binary}: `make deploy-tools` builds the pinned one (make test does)")
    home = ROOT / ".tools" / "helm-home"  # helm's cache and config stay out of the user's home
    env = {**os.environ, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, check=False, timeout=60)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def unknown_settings_variables(names: typing.Iterable[str]) -> list[str]:
    """The RILLET_* names that are no Settings field (RILLET_A__B is field b of section a).

    Checked by walking the model, because sections that allow extra keys would ignore a misspelt one silently.
    """
    unknown = []
    for name in names:
        model: type[BaseModel] | None = Settings
        for part in name.removeprefix("RILLET_").lower().split("__"):
            field = model.model_fields.get(part) if model is not None else None
            if field is None:
                unknown.append(name)
                break
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return unknown
