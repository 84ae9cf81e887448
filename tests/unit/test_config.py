"""Settings: defaults, RILLET_* variables (nested with __), and explicit values that override them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rillet.server.config import Settings, TextEngineKind


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILLET_PORT", "6000")
    monkeypatch.setenv("RILLET_TEXT_ENGINE", "synthetic")
    monkeypatch.setenv("RILLET_SYNTHETIC__TOKENS_PER_SECOND", "33")
    monkeypatch.setenv("RILLET_LIMITS__MAX_TOKENS", "512")
    settings = Settings(port=7000, synthetic={"slots": 3})
    assert settings.port == 7000  # the flag wins over the variable
    assert settings.text_engine is TextEngineKind.SYNTHETIC
    assert settings.synthetic.tokens_per_second == 33  # nested variables merge with nested overrides
    assert settings.synthetic.slots == 3
    assert settings.limits.max_tokens == 512


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(limits={"max_tokens": 10, "default_max_tokens": 20})
    monkeypatch.setenv("RILLET_TEXT_ENGINE", "gpt-9")
    with pytest.raises(ValidationError):
        Settings()
