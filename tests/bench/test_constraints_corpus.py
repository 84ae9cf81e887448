"""The JSON Schema validity corpus (rillet.bench.constraints.corpus): its size, its mix, every schema usable."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
from llguidance import LLMatcher

from rillet.bench.constraints.corpus import decode, load, valid
from rillet.server.engine.constraints import JSON_OPTIONS


def test_the_corpus_holds_over_a_hundred_realistic_schemas_and_generated_ones() -> None:
    entries = load()
    sources = Counter(entry.source for entry in entries)
    assert sources["realistic"] >= 100
    assert sources["generated"] >= 50
    assert len({entry.name for entry in entries}) == len(entries)
    texts = [json.dumps(entry.schema) for entry in entries]
    assert all(any(key in text for text in texts) for key in ('"$ref"', '"enum"', '"format"', '"required"', '"items"'))


def test_every_schema_is_a_valid_json_schema_that_llguidance_compiles() -> None:
    for entry in load():
        jsonschema.Draft202012Validator.check_schema(entry.schema)
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(entry.schema), defaults=JSON_OPTIONS)
        assert LLMatcher.validate_grammar(grammar, None) == "", entry.name


def test_validity_checks_formats_and_structure() -> None:
    schema = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at"]}
    assert valid(schema, '{"at": "2026-12-08T10:00:00Z"}')
    assert not valid(schema, '{"at": "2026-13-08T10:00:00Z"}')  # a month that does not exist: the format is checked
    assert not valid(schema, "{}")
    assert not valid(schema, '{"at": "2026-12-08T10:00:00Z"')  # not JSON


def test_a_generated_description_decodes_to_the_schema_it_describes() -> None:
    description = ["object", [["id", True, ["integer", -5, 9]], ["tags", False, ["array", ["enum", ["a", "b"]], 0, 2]]]]
    assert decode(description) == {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": -5, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 0, "maxItems": 2},
        },
        "required": ["id"],
        "additionalProperties": False,
    }
