"""The engine registry: every engine kind with its module, its typed config section and its factory, in one table.

Adding an engine takes exactly this (tests/unit/test_registry.py fails until all of it agrees):
1. its module, `server/rillet/server/engine/<kind>.py`, with a class implementing TextEngine or SpeechEngine
   (engine/base.py) whose constructor takes the config section alone and whose `name` is the kind; heavy
   dependencies imported inside it (the registry imports the module only when the kind is selected);
2. its config section in config.py: a frozen pydantic model, a `Settings` field named as the kind holding it
   (so RILLET_<KIND>__<FIELD> configures it), and the kind as a value of TextEngineKind or SpeechEngineKind (the
   choices `--text-engine`/`--speech-engine` and RILLET_TEXT_ENGINE/RILLET_SPEECH_ENGINE accept);
3. one `EngineEntry` line in ENGINES below;
then `tests/contract/` runs the engine contract on it (add its case in tests/contract/engines.py): a new engine
is done when that suite passes on it. `app.build_engines` never changes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel

from rillet.server.config import LlamaCppConfig, PiperConfig, Settings, SyntheticConfig, TrtllmConfig
from rillet.server.engine.base import Engine
from rillet.server.types import ModelKind

__all__ = ["ENGINES", "NO_ENGINE", "EngineEntry", "build", "entry", "kinds", "selected"]

TEXT = ModelKind.TEXT_GENERATION
SPEECH = ModelKind.SPEECH_SYNTHESIS

NO_ENGINE = "none"
"""The selection that serves nothing of that kind (e.g. `--speech-engine none`)."""


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """One engine kind: what it serves, its config section's type, and where its factory lives."""

    kind: str
    """The name settings select it by; also the `Settings` field holding its config section and the engine's name."""
    serves: ModelKind
    config: type[BaseModel]
    factory: str
    """"module:attribute": a callable taking the config section and returning the engine, imported when selected."""

    def section(self, settings: Settings) -> BaseModel:
        """The engine's config section of `settings`."""
        section = getattr(settings, self.kind, None)
        if not isinstance(section, self.config):
            raise TypeError(f"Settings.{self.kind} must hold a {self.config.__name__}, the {self.kind} engine's config")
        return section

    def create(self, settings: Settings) -> Engine:
        """Import the engine's module and build the engine from its section; checks what it claims to serve."""
        module, _, attribute = self.factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        engine: Engine = factory(self.section(settings))
        if engine.serves is not self.serves or engine.name != self.kind:
            raise TypeError(
                f"{self.factory} built an engine named {engine.name!r} serving {engine.serves.value}; "
                f"the registry lists {self.kind!r} serving {self.serves.value}"
            )
        return engine


ENGINES: tuple[EngineEntry, ...] = (
    EngineEntry("llamacpp", TEXT, LlamaCppConfig, "rillet.server.engine.llamacpp:LlamaCppEngine"),
    EngineEntry("synthetic", TEXT, SyntheticConfig, "rillet.server.engine.synthetic:SyntheticEngine"),
    EngineEntry("trtllm", TEXT, TrtllmConfig, "rillet.server.engine.trtllm:TrtllmEngine"),
    EngineEntry("piper", SPEECH, PiperConfig, "rillet.server.engine.piper:PiperEngine"),
)
"""Every engine Rillet can run. Order is irrelevant; kinds are unique."""


def kinds(serves: ModelKind) -> tuple[str, ...]:
    """The kinds of the registered engines that serve `serves`."""
    return tuple(e.kind for e in ENGINES if e.serves is serves)


def entry(kind: str) -> EngineEntry:
    """The entry for `kind`; KeyError naming the registered kinds when there is none."""
    for candidate in ENGINES:
        if candidate.kind == kind:
            return candidate
    raise KeyError(f"no engine {kind!r} in the registry; registered: {', '.join(e.kind for e in ENGINES)}")


def selected(settings: Settings) -> list[EngineEntry]:
    """The entries the settings select, text first; NO_ENGINE selects nothing."""
    entries: list[EngineEntry] = []
    for kind, serves in ((settings.text_engine, TEXT), (settings.speech_engine, SPEECH)):
        if kind == NO_ENGINE:
            continue
        picked = entry(kind)
        if picked.serves is not serves:
            raise ValueError(f"engine {kind!r} serves {picked.serves.value}, not {serves.value}")
        entries.append(picked)
    return entries


def build(settings: Settings) -> list[Engine]:
    """The engines the settings select, built (not started), text first."""
    return [e.create(settings) for e in selected(settings)]
