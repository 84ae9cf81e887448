"""The piper engine's configuration errors: a voice configured wrong fails the start as ConfigurationError."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rillet.server.config import PiperConfig
from rillet.server.engine.piper import PiperEngine, configured_voices
from rillet.server.errors import ConfigurationError, RilletError


def voice(folder: Path, name: str = "v", rate: int = 22050) -> str:
    """A voice's files on disk (the model's bytes are never read before `start`)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"{name}.onnx"
    model.write_bytes(b"")
    (folder / f"{name}.onnx.json").write_text(json.dumps({"audio": {"sample_rate": rate}}))
    return str(model)


def test_two_voices_of_one_name_are_a_configuration_error(tmp_path: Path) -> None:
    config = PiperConfig(bundled_voice=False, voice_paths=(voice(tmp_path / "a"), voice(tmp_path / "b")))
    with pytest.raises(ConfigurationError, match=r"must be unique.*: v$") as error:
        configured_voices(config)
    assert not isinstance(error.value, RilletError)  # never sent to a client: it has no code and no reason


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda folder: str(folder / "missing.onnx"), "no such file"),
        (lambda folder: voice(folder, rate=0), "declares sample rate 0"),
    ],
)
def test_a_voice_that_cannot_be_read_is_a_configuration_error(
    tmp_path: Path, make: Callable[[Path], str], said: str
) -> None:
    with pytest.raises(ConfigurationError, match=said):
        PiperEngine(PiperConfig(bundled_voice=False, voice_paths=(make(tmp_path),)))


def test_a_good_configuration_builds_an_engine_that_is_not_serving_yet(tmp_path: Path) -> None:
    engine = PiperEngine(PiperConfig(bundled_voice=False, voice_paths=(voice(tmp_path),)))
    assert [model.name for model in engine.models] == ["v"]
    assert engine.healthy()
    with pytest.raises(RilletError) as refused:
        engine.check_serving()
    assert refused.value.reason == "WARMING_UP"
