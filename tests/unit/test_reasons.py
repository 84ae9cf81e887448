"""The reasons catalogue (reasons.py) is the whole set: every reason the code raises is in it, with its code.

Call sites name reasons by their constants (`reason=Reason.PROMPT_TOO_LONG`), never by a string literal, so a
misspelt reason is an AttributeError (and a mypy error) rather than a new reason no client knows. The contract's
rillet.v1.ErrorReason lists the catalogue's reasons in its order (scripts/gen_reasons.py writes it, and the README's
table; `make lint` checks both are fresh).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rillet.server import errors
from rillet.server.reasons import CATALOGUE, Reason
from rillet.v1 import errors_pb2

SERVER = Path(errors.__file__).parent
ERROR_CLASSES = {
    name: cls.code
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.RilletError) and cls is not errors.RilletError
}
STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)
"""A status code's name is no reason when it is spelt as one (telemetry's sets of codes, say)."""


def modules() -> Iterator[tuple[str, ast.Module]]:
    """(path relative to the server package, syntax tree) of every module of the server package."""
    for path in sorted(SERVER.rglob("*.py")):
        yield path.relative_to(SERVER).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _named(value: ast.expr) -> str | None:
    """The reason `value` names: `Reason.X`, or a string literal; None for anything else (a variable)."""
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "Reason":
        return value.attr
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None


def raised() -> list[tuple[str, str, str]]:
    """(error class, reason, module) for every reason given to an error class by name, and every class default."""
    found = []
    for where, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in ERROR_CLASSES:
                for keyword in node.keywords:
                    if keyword.arg == "reason" and (reason := _named(keyword.value)) is not None:
                        found.append((_called(node), reason, where))
    found += [(name, cls.default_reason, "errors.py") for name, cls in vars(errors).items() if name in ERROR_CLASSES]
    return found


def test_every_reason_the_code_raises_is_catalogued_with_the_code_it_travels_with() -> None:
    sites = raised()
    assert len(sites) > 80  # the scan sees the code
    for name, reason, where in sites:
        assert reason in Reason.__members__, f"{where}: {reason} is not in reasons.Reason"
        assert CATALOGUE[Reason(reason)].code == ERROR_CLASSES[name], f"{where}: {name}({reason})"


def test_every_catalogued_reason_is_documented_once() -> None:
    assert list(CATALOGUE) == list(Reason)  # the catalogue's order is the contract's and the README's
    assert all(str(reason) == reason.name for reason in Reason)
    assert all(doc.when and doc.action for doc in CATALOGUE.values())


def test_class_defaults_are_reasons() -> None:
    for name in ERROR_CLASSES:
        assert isinstance(getattr(errors, name).default_reason, Reason), name


def literal_reasons() -> list[str]:
    """Where a reason is spelt as a string: a `reason=` or `default_reason =` literal, or any string spelling one."""
    found = []
    for where, tree in modules():
        if where == "reasons.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in Reason.__members__ and node.value not in STATUS_NAMES:
                found.append(f"{where}:{node.lineno}: {node.value!r}")
            elif isinstance(node, ast.keyword) and node.arg == "reason" and isinstance(node.value, ast.Constant):
                found.append(f"{where}:{node.value.lineno}: reason={node.value.value!r}")
            elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "default_reason" for t in targets):
                    found.append(f"{where}:{node.lineno}: default_reason = {node.value.value!r}")
    return found


def test_reasons_are_named_by_their_constants_never_by_string_literals() -> None:
    assert literal_reasons() == []


def test_the_scan_finds_a_literal_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule above can fail: a module spelling a reason as a string is reported, by line."""
    source = 'raise InvalidArgument("no", reason="EMPTY_PROMPT")\nkind = "QUEUE_FULL"\nok = "INTERNAL"\n'
    monkeypatch.setattr(f"{__name__}.modules", lambda: iter([("transport/x.py", ast.parse(source))]))
    assert sorted(literal_reasons()) == [
        "transport/x.py:1: 'EMPTY_PROMPT'",
        "transport/x.py:1: reason='EMPTY_PROMPT'",
        "transport/x.py:2: 'QUEUE_FULL'",
    ]


def test_the_contract_lists_the_catalogue_in_its_order() -> None:
    names = errors_pb2.ErrorReason.keys()
    assert names[0] == "ERROR_REASON_UNSPECIFIED"
    assert errors_pb2.ErrorReason.Value(names[0]) == 0
    assert [name.removeprefix("ERROR_REASON_") for name in names[1:]] == [reason.name for reason in Reason]
