"""`make gpu-check` (deploy/gpu/gpu_check.py): its whole logic on the TensorRT-LLM double, and its report's rules."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "gpu" / "gpu_check.py"


def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.contract.test_text_contract" name="test_max_tokens_is_honoured[trtllm-5]" />
<testcase classname="tests.contract.test_text_contract" name="test_logprobs_are_real_or_refused[trtllm-0.0]">
  <failure message="AssertionError: assert -9999.0 &lt;= 0.0 and finite&#10;second line">traceback</failure>
</testcase>
<testcase classname="tests.contract.test_text_contract" name="test_seeded_sampling_is_reproducible[trtllm]">
  <skipped message="trtllm does not promise reproducible seeds" />
</testcase>
<testcase classname="tests.engine.test_trtllm" name="test_something_new"><error message="fixture failed" /></testcase>
</testsuite></testsuites>"""


def test_junit_cases_are_read_with_their_outcome_and_what_a_failure_means(tmp_path: Path) -> None:
    module = gpu_check()
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    cases = module.junit_cases(report)
    assert [c.outcome for c in cases] == ["passed", "failed", "skipped", "error"]
    assert cases[1].detail == "AssertionError: assert -9999.0 <= 0.0 and finite"
    assert "top_logprobs" in cases[1].meaning  # the logprob case's own explanation
    assert cases[0].meaning == cases[2].meaning == ""  # only failures get one
    assert cases[3].meaning == "see deploy/gpu/README.md"


def test_the_verdict_fails_on_any_failed_case_missed_target_or_missing_part(tmp_path: Path) -> None:
    module = gpu_check()
    passed = {"auto": [module.Case("t::a", "passed")]}
    failed = {"auto": [module.Case("t::a", "passed"), module.Case("t::test_utf8_characters_x", "failed", "boom")]}
    met = {"date": "d", "comparisons": [{"passed": True}]}
    missed = {"date": "d", "comparisons": [{"passed": True}, {"passed": False}]}
    assert module.verdict(passed, [], met, double=False) == "PASS"
    assert module.verdict(failed, [], met, double=False) == "FAIL"
    assert module.verdict(passed, [], missed, double=False) == "FAIL"
    assert module.verdict(passed, [], missed, double=True) == "PASS"  # the double's numbers judge nothing
    assert module.verdict(passed, [], None, double=False) == "FAIL"  # the bench did not run
    assert module.verdict(passed, ["auto: pytest exited 4"], met, double=False) == "FAIL"
    assert module.verdict({"auto": []}, [], met, double=False) == "FAIL"  # nothing ran is no pass
    env = {"tensorrt_llm": "1.2.1"}
    markdown = module.render("stamp", env, failed, [], met, "# t\n\n| table |\n", False)
    assert "**Verdict: FAIL**" in markdown
    assert "| auto | `t::test_utf8_characters_x` | failed (boom) | the detokenizer splits a character" in markdown
    assert "| table |" in markdown


def test_without_tensorrt_llm_the_check_stops_at_once_saying_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    module = gpu_check()
    assert module.main(["--model", "some/model"]) == 2
    assert "TensorRT-LLM is not installed" in capsys.readouterr().err


def test_make_gpu_check_runs_its_whole_logic_against_the_double(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--double", "--concurrency", "1", "2", "--requests", "4"]
    command += ["--max-tokens", "8", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = tmp_path.glob("gpu_check_*.json")
    document: dict[str, Any] = json.loads(report.read_text())
    assert document["verdict"] == "PASS"
    assert "test double" in document["environment"]["tensorrt_llm"]
    assert set(document["tests"]) == {"auto", "TRTLLMSampler"}
    for sampler, cases in document["tests"].items():
        assert len(cases) > 20, sampler  # the whole contract suite on that sampler's case
        assert all(c["outcome"] in ("passed", "skipped") for c in cases)
    seeded = [c for c in document["tests"]["TRTLLMSampler"] if "seeded" in c["name"]]
    assert [c["outcome"] for c in seeded] == ["passed"]  # TRTLLMSampler promises reproducible seeds, and keeps it
    assert [c["concurrency"] for c in document["bench"]["comparisons"]] == [1, 2]
    markdown = report.with_suffix(".md").read_text()
    for section in ("**Verdict: PASS**", "## Environment", "## Contract suite", "## Side by side", "| 2 |"):
        assert section in markdown


def test_every_gpu_test_has_a_meaning_and_every_meaning_a_test() -> None:
    """What a GPU run checks is the `gpu` tests and the contract: each failure the report can show is explained."""
    module = gpu_check()
    sources = [*(REPO / "tests" / "contract").glob("*.py"), *(REPO / "tests" / "engine").glob("*.py")]
    text = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    names = set(re.findall(r"^(?:async )?def (test_\w+)", text, re.M))
    gpu = re.findall(r"^@pytest\.mark\.gpu\n(?:async )?def (test_\w+)", text, re.M)
    assert "test_the_real_engine_tokenizes_as_it_generates_and_reports_its_kv_cache" in gpu
    for name in gpu:
        assert any(name.startswith(prefix) for prefix in module.MEANINGS), f"{name} has no meaning in gpu_check.py"
    for prefix in module.MEANINGS:
        assert any(name.startswith(prefix) for name in names), f"MEANINGS[{prefix!r}] names no test"
