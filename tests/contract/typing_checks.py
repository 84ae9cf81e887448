"""Type-checker tests of the engine seam (checked by mypy in `make lint`, never run): requests reach only their kind.

A `# type: ignore[...]` marks a line that must be rejected; with warn_unused_ignores, accepting it fails mypy.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import assert_type

from rillet.server.engine.base import Engine, SpeechEngine, SpeechEvent, TextEngine, TextEvent
from rillet.server.engine.llamacpp import LlamaCppEngine
from rillet.server.engine.piper import PiperEngine
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.scheduler import Router, SpeechJob, SpeechRoute, TextJob, TextRoute
from rillet.server.types import AudioEncoding, AudioOutput, GenerationRequest, ModelKind, SynthesisRequest
from tests.doubles import EchoSpeechEngine

PCM = AudioOutput(AudioEncoding.LINEAR16, 16_000, 0.1)


def every_engine_is_its_kind(llamacpp: LlamaCppEngine, synthetic: SyntheticEngine, piper: PiperEngine) -> None:
    texts: list[TextEngine] = [llamacpp, synthetic]
    speech: list[SpeechEngine] = [piper, EchoSpeechEngine()]
    wrong_text: TextEngine = piper  # type: ignore[assignment]
    wrong_speech: SpeechEngine = synthetic  # type: ignore[assignment]
    del texts, speech, wrong_text, wrong_speech


def requests_reach_only_their_kind(
    text: TextEngine, speech: SpeechEngine, g: GenerationRequest, s: SynthesisRequest
) -> None:
    assert_type(text.stream(g), AsyncGenerator[TextEvent, None])
    assert_type(speech.stream(s), AsyncGenerator[SpeechEvent, None])
    speech.stream(g)  # type: ignore[arg-type]
    text.stream(s)  # type: ignore[arg-type]


def the_router_hands_out_routes_of_the_kind_asked_for(router: Router, g: GenerationRequest) -> None:
    assert_type(router.resolve("", ModelKind.TEXT_GENERATION), TextRoute)
    assert_type(router.resolve("", ModelKind.SPEECH_SYNTHESIS), SpeechRoute)
    TextJob(router.resolve("", ModelKind.TEXT_GENERATION), g)
    SpeechJob(router.resolve("", ModelKind.SPEECH_SYNTHESIS), g, PCM)  # type: ignore[arg-type]


def synthesis_cannot_be_paired_with_a_text_route(route: TextRoute, s: SynthesisRequest) -> None:
    TextJob(route, s)  # type: ignore[arg-type]


def the_tag_narrows(engine: Engine) -> None:
    if engine.serves is ModelKind.TEXT_GENERATION:
        assert_type(engine, TextEngine)
    else:
        assert_type(engine, SpeechEngine)
