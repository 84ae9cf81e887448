"""The engine registry agrees with the settings and builds engines without importing unselected backends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rillet.server.config import SchedulerConfig, Settings, SpeechEngineKind, SyntheticConfig, TextEngineKind
from rillet.server.engine import registry
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.errors import ConfigurationError
from rillet.server.scheduler import Router
from rillet.server.types import ModelKind


def test_the_selectable_kinds_are_exactly_the_registered_ones() -> None:
    assert {k.value for k in TextEngineKind} == set(registry.kinds(ModelKind.TEXT_GENERATION))
    assert {k.value for k in SpeechEngineKind} == {*registry.kinds(ModelKind.SPEECH_SYNTHESIS), registry.NO_ENGINE}


def test_kinds_are_unique() -> None:
    kinds = [e.kind for e in registry.ENGINES]
    assert len(kinds) == len(set(kinds))


@pytest.mark.parametrize("entry", registry.ENGINES, ids=lambda e: e.kind)
def test_every_engine_has_its_typed_config_section(entry: registry.EngineEntry) -> None:
    assert Settings.model_fields[entry.kind].annotation is entry.config
    assert isinstance(entry.section(Settings()), entry.config)
    module, _, attribute = entry.factory.partition(":")
    assert module == f"rillet.server.engine.{entry.kind}"
    assert attribute


def test_build_makes_the_selected_engines_text_first() -> None:
    engines = registry.build(Settings(text_engine=TextEngineKind.SYNTHETIC, speech_engine=SpeechEngineKind.NONE))
    assert [type(e) for e in engines] == [SyntheticEngine]
    assert engines[0].name == "synthetic"


def test_an_unknown_kind_names_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="registered: llamacpp"):
        registry.entry("nope")


def test_an_engine_that_is_not_what_its_entry_says_is_refused() -> None:
    wrong = registry.EngineEntry(
        "synthetic", ModelKind.SPEECH_SYNTHESIS, registry.entry("synthetic").config, registry.entry("synthetic").factory
    )
    with pytest.raises(TypeError, match="serving text_generation"):
        wrong.create(Settings())


def test_selecting_the_synthetic_engine_imports_no_heavy_backend() -> None:
    code = (
        "import sys\n"
        "from rillet.server.config import Settings\n"
        "from rillet.server.app import build_engines\n"
        "build_engines(Settings(text_engine='synthetic', speech_engine='none'))\n"
        "heavy = [m for m in ('llama_cpp', 'rillet.server.engine.llamacpp', 'piper', 'onnxruntime', 'tensorrt_llm')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_two_engines_serving_one_model_name_is_a_configuration_error() -> None:
    router = Router([SyntheticEngine(SyntheticConfig()), SyntheticEngine(SyntheticConfig())], SchedulerConfig())
    with pytest.raises(ConfigurationError, match="served by two engines"):
        await router.start()
