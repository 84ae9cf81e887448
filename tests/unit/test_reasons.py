"""The reasons catalogue (reasons.py) is the whole set: every reason the code raises is in it, with its code."""

from __future__ import annotations

import ast
from pathlib import Path

from rillet.server import errors
from rillet.server.reasons import CATALOGUE, Reason

SERVER = Path(errors.__file__).parent
ERROR_CLASSES = {
    name: cls.code
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.RilletError) and cls is not errors.RilletError
}


def raised() -> list[tuple[str, str, str]]:
    """(error class, reason, file) for every literal reason given to an error class, and every class default."""
    found = []
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                for keyword in node.keywords:
                    if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant) and name in ERROR_CLASSES:
                        found.append((name, str(keyword.value.value), path.name))
    found += [(name, cls.default_reason, "errors.py") for name, cls in vars(errors).items() if name in ERROR_CLASSES]
    return found


def test_every_reason_the_code_raises_is_catalogued_with_the_code_it_travels_with() -> None:
    sites = raised()
    assert len(sites) > 80  # the scan sees the code
    for name, reason, where in sites:
        assert reason in Reason.__members__, f"{where}: {reason} is not in reasons.Reason"
        assert CATALOGUE[Reason(reason)].code == ERROR_CLASSES[name], f"{where}: {name}({reason})"


def test_every_catalogued_reason_is_documented_once() -> None:
    assert set(CATALOGUE) == set(Reason)
    assert all(str(reason) == reason.name for reason in Reason)
    assert all(doc.when and doc.action for doc in CATALOGUE.values())
