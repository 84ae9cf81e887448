"""Output constraints through the real server and SDK, on the synthetic engine's real (llguidance) path."""

from __future__ import annotations

import json
import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from rillet.client import Client, FinishReason, IncompleteOutputError, InvalidArgumentError


class Address(BaseModel):
    city: str = Field(max_length=24)


class Order(BaseModel):
    id: int = Field(ge=1, le=9999)
    status: Literal["open", "shipped"]
    items: list[str] = Field(max_length=2)
    address: Address


async def test_list_models_names_the_kinds_the_model_enforces(client: Client) -> None:
    models = await client.list_models()
    caps = next(m.text_capabilities for m in models if m.text_capabilities is not None)
    assert caps is not None
    assert caps.constraint_kinds == {"json_schema", "regex", "grammar", "choice", "json_object"}


async def test_a_pydantic_model_is_the_schema_and_parse_validates_into_it(client: Client) -> None:
    order = await client.generate("an order", json_schema=Order, max_tokens=200).parse(Order)
    assert isinstance(order, Order)
    assert isinstance(order.address, Address)
    async with client.session() as session:
        again = await (await session.generate("an order", json_schema=Order, max_tokens=200)).parse(Order)
        await session.close()
    assert again == order  # the same prompt, greedy: the same output, through a session too


async def test_each_kind_constrains_the_output(client: Client) -> None:
    regex = await client.generate("x", regex=r"[a-z]{2}-[0-9]{3}").collect()
    assert re.fullmatch(r"[a-z]{2}-[0-9]{3}", regex.text)
    grammar = await client.generate("x", grammar='start: "n=" /[0-9]{1,3}/ ";"').collect()
    assert re.fullmatch(r"n=[0-9]{1,3};", grammar.text)
    choice = await client.generate("x", choice=["maybe", "yes", "no"]).collect()
    assert choice.text in {"maybe", "yes", "no"}
    obj = await client.generate("x", json_object=True, max_tokens=100).collect()
    assert isinstance(json.loads(obj.text), dict)
    schema = await client.generate("x", json_schema={"type": "array", "items": {"type": "integer"}}).collect()
    assert isinstance(json.loads(schema.text), list)
    for result in (regex, grammar, choice, obj, schema):
        assert result.finished.reason is FinishReason.STOP


async def test_an_output_cut_by_max_tokens_is_incomplete_not_parsed(client: Client) -> None:
    with pytest.raises(IncompleteOutputError) as caught:
        await client.generate("an order", json_schema=Order, max_tokens=4).parse(Order)
    assert caught.value.reason == "LENGTH"
    assert caught.value.result.finished.reason is FinishReason.LENGTH
    assert caught.value.result.text.startswith("{")


async def test_a_bad_constraint_is_invalid_argument_saying_where(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.generate("x", regex="a(b").collect()
    assert (caught.value.reason, caught.value.metadata["field"]) == ("CONSTRAINT_INVALID", "params.regex")
    assert "unclosed group" in caught.value.message
