"""The JSON Schema validity corpus (corpus.json): realistic schemas written here, and ones hypothesis-jsonschema drew.

`python -m rillet.bench.constraints.corpus` rewrites corpus.json: the realistic schemas below, then GENERATED
schemas hypothesis-jsonschema draws (derandomized, so the pinned hypothesis and hypothesis-jsonschema draw the same
ones) as instances of META, descriptions of schemas (objects of typed leaves, enums, arrays and nested objects, each
property required or not), each kept only if llguidance compiles it. Every entry has a name, its source, a
description for its prompt (the same for every system a benchmark compares) and the schema; `load` reads the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "META", "Entry", "decode", "load", "prompt", "valid"]

CORPUS = Path(__file__).with_name("corpus.json")
GENERATED = 60
"""How many generated schemas the corpus holds beside the realistic ones."""

Schema = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One schema of the corpus, and what to ask the model for."""

    name: str
    source: str  # "realistic" or "generated"
    description: str
    schema: Schema

    @property
    def prompt(self) -> str:
        return prompt(self.description, self.schema)


def prompt(description: str, schema: Schema) -> str:
    """What the model is asked: the schema, then a line to continue with the JSON (a completion prompt)."""
    return f"JSON Schema of {description}:\n{json.dumps(schema)}\nA valid instance, on one line:\n"


def load() -> list[Entry]:
    """The corpus, in its file's order (realistic first)."""
    return [Entry(**entry) for entry in json.loads(CORPUS.read_text(encoding="utf-8"))]


def valid(schema: Schema, text: str) -> bool:
    """Whether `text` is one JSON document valid against `schema`, formats checked.

    The jsonschema library checks formats with other packages where they are installed (the dev extra pins them):
    date-time and time with rfc3339-validator, uri with rfc3986-validator, hostname with fqdn.
    """
    import jsonschema

    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
    try:
        document = json.loads(text)
    except ValueError:
        return False
    return validator.is_valid(document)


# -- the realistic schemas ---------------------------------------------------------------------------------------------


def string(**keywords: Any) -> Schema:
    return {"type": "string", **keywords}


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    bounds = {"minimum": minimum, "maximum": maximum}
    return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}}


def number(minimum: float | None = None, maximum: float | None = None) -> Schema:
    bounds = {"minimum": minimum, "maximum": maximum}
    return {"type": "number", **{k: v for k, v in bounds.items() if v is not None}}


def enum(*values: Any) -> Schema:
    return {"enum": list(values)}


def array(items: Schema, min_items: int | None = None, max_items: int | None = None) -> Schema:
    bounds = {"minItems": min_items, "maxItems": max_items}
    return {"type": "array", "items": items, **{k: v for k, v in bounds.items() if v is not None}}


def obj(properties: dict[str, Schema], required: list[str] | None = None, *, closed: bool = True) -> Schema:
    """An object of `properties`, all required unless `required` says which; closed: no other properties."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def with_defs(root: Schema, **definitions: Schema) -> Schema:
    return {**root, "$defs": definitions}


BOOL: Schema = {"type": "boolean"}
DATE = string(format="date")
DATETIME = string(format="date-time")
TIME = string(format="time")
EMAIL = string(format="email")
UUID = string(format="uuid")
URI = string(format="uri")
IPV4 = string(format="ipv4")
IPV6 = string(format="ipv6")
HOSTNAME = string(format="hostname")
NAME = string(minLength=1, maxLength=40)
SHORT = string(maxLength=24)
TEXT = string(maxLength=120)
MONEY = number(0, 1_000_000)
CURRENCY = enum("USD", "EUR", "GBP", "JPY", "CHF")
COUNTRY = string(pattern="^[A-Z]{2}$")
PHONE = string(pattern="^\\+[0-9]{7,14}$")
ADDRESS = obj({"street": SHORT, "city": SHORT, "postal_code": string(pattern="^[0-9A-Z -]{3,10}$"), "country": COUNTRY})
GEO = obj({"lat": number(-90, 90), "lon": number(-180, 180)})
PERSON = obj({"first_name": NAME, "last_name": NAME, "email": EMAIL}, ["first_name", "last_name"])


def realistic() -> list[tuple[str, str, Schema]]:
    """(name, description, schema) of each realistic schema: records a pipeline asks a model to fill."""
    return [
        # People and organisations
        ("person", "a person", obj({"name": NAME, "age": integer(0, 130), "email": EMAIL})),
        (
            "contact",
            "a contact card",
            obj({"name": NAME, "phone": PHONE, "email": EMAIL, "company": nullable(SHORT)}, ["name"]),
        ),
        (
            "user_profile",
            "a user profile",
            obj(
                {
                    "id": UUID,
                    "username": string(pattern="^[a-z0-9_]{3,16}$"),
                    "display_name": NAME,
                    "created_at": DATETIME,
                    "verified": BOOL,
                }
            ),
        ),
        (
            "employee",
            "an employee record",
            with_defs(
                obj(
                    {
                        "employee_id": integer(1, 99999),
                        "person": ref("person"),
                        "department": enum("engineering", "sales", "finance", "support"),
                        "manager_id": nullable(integer(1, 99999)),
                        "start_date": DATE,
                    }
                ),
                person=PERSON,
            ),
        ),
        (
            "company",
            "a company",
            obj(
                {
                    "name": NAME,
                    "founded": integer(1800, 2026),
                    "headquarters": ADDRESS,
                    "employees": integer(1),
                    "public": BOOL,
                    "website": URI,
                },
                ["name", "founded", "headquarters"],
            ),
        ),
        (
            "team",
            "a team and its members",
            obj({"team": SHORT, "members": array(obj({"name": NAME, "role": enum("lead", "member", "intern")}), 1, 5)}),
        ),
        (
            "customer",
            "a customer",
            with_defs(
                obj(
                    {
                        "customer_id": string(pattern="^C[0-9]{6}$"),
                        "name": NAME,
                        "billing": ref("address"),
                        "shipping": ref("address"),
                        "tier": enum("free", "pro", "enterprise"),
                    },
                    ["customer_id", "name", "billing", "tier"],
                ),
                address=ADDRESS,
            ),
        ),
        (
            "signup",
            "a newsletter sign-up",
            obj(
                {
                    "email": EMAIL,
                    "topics": array(enum("news", "offers", "events", "product"), 1, 4),
                    "consent": {"const": True},
                }
            ),
        ),
        (
            "author",
            "a book author",
            obj({"name": NAME, "born": integer(1000, 2026), "nationality": COUNTRY, "genres": array(SHORT, 0, 3)}),
        ),
        (
            "patient",
            "a patient record",
            obj(
                {
                    "patient_id": UUID,
                    "name": NAME,
                    "date_of_birth": DATE,
                    "sex": enum("female", "male", "other", "unknown"),
                    "allergies": array(SHORT, 0, 5),
                    "blood_type": enum("A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"),
                }
            ),
        ),
        # Commerce
        (
            "product",
            "a product",
            obj(
                {
                    "sku": string(pattern="^[A-Z]{3}-[0-9]{4}$"),
                    "name": NAME,
                    "price": MONEY,
                    "currency": CURRENCY,
                    "in_stock": BOOL,
                }
            ),
        ),
        (
            "order",
            "a customer order",
            with_defs(
                obj(
                    {
                        "order_id": integer(1),
                        "status": enum("pending", "paid", "shipped", "delivered", "cancelled"),
                        "items": array(ref("line"), 1, 4),
                        "total": MONEY,
                    }
                ),
                line=obj({"sku": SHORT, "quantity": integer(1, 100), "unit_price": MONEY}),
            ),
        ),
        (
            "invoice",
            "an invoice",
            obj(
                {
                    "invoice_number": string(pattern="^INV-[0-9]{5}$"),
                    "issued": DATE,
                    "due": DATE,
                    "customer": NAME,
                    "lines": array(obj({"description": SHORT, "amount": MONEY}), 1, 3),
                    "currency": CURRENCY,
                    "paid": BOOL,
                }
            ),
        ),
        (
            "cart",
            "a shopping cart",
            obj(
                {
                    "cart_id": UUID,
                    "items": array(obj({"product_id": integer(1), "quantity": integer(1, 20)}), 0, 5),
                    "coupon": nullable(string(pattern="^[A-Z0-9]{4,10}$")),
                }
            ),
        ),
        (
            "review",
            "a product review",
            obj({"product_id": integer(1), "rating": integer(1, 5), "title": SHORT, "body": TEXT, "recommend": BOOL}),
        ),
        (
            "payment",
            "a card payment",
            obj(
                {
                    "payment_id": UUID,
                    "amount": MONEY,
                    "currency": CURRENCY,
                    "method": enum("card", "bank_transfer", "wallet"),
                    "status": enum("authorized", "captured", "refunded", "failed"),
                    "created_at": DATETIME,
                }
            ),
        ),
        (
            "refund",
            "a refund request",
            obj(
                {
                    "order_id": integer(1),
                    "reason": enum("damaged", "late", "wrong_item", "other"),
                    "amount": MONEY,
                    "note": nullable(TEXT),
                },
                ["order_id", "reason", "amount"],
            ),
        ),
        (
            "shipment",
            "a shipment",
            with_defs(
                obj(
                    {
                        "tracking_number": string(pattern="^[A-Z0-9]{10,18}$"),
                        "carrier": enum("UPS", "DHL", "FedEx", "USPS"),
                        "from": ref("address"),
                        "to": ref("address"),
                        "weight_kg": number(0, 1000),
                        "events": array(obj({"at": DATETIME, "status": SHORT}), 0, 3),
                    }
                ),
                address=ADDRESS,
            ),
        ),
        (
            "inventory_item",
            "a warehouse inventory item",
            obj(
                {
                    "sku": SHORT,
                    "location": string(pattern="^[A-Z][0-9]{2}-[0-9]{2}$"),
                    "quantity": integer(0),
                    "reorder_level": integer(0),
                    "last_counted": DATE,
                }
            ),
        ),
        (
            "price_quote",
            "a price quote",
            obj(
                {
                    "quote_id": integer(1),
                    "valid_until": DATE,
                    "items": array(obj({"name": SHORT, "price": MONEY}), 1, 4),
                    "discount_percent": number(0, 100),
                },
                ["quote_id", "items"],
            ),
        ),
        (
            "coupon",
            "a discount coupon",
            obj(
                {
                    "code": string(pattern="^[A-Z0-9]{6}$"),
                    "kind": enum("percent", "fixed"),
                    "value": number(0, 100),
                    "expires": DATE,
                    "single_use": BOOL,
                }
            ),
        ),
        (
            "subscription",
            "a subscription",
            obj(
                {
                    "plan": enum("monthly", "yearly"),
                    "price": MONEY,
                    "currency": CURRENCY,
                    "renews_on": DATE,
                    "auto_renew": BOOL,
                    "seats": integer(1, 500),
                }
            ),
        ),
        (
            "menu_item",
            "a restaurant menu item",
            obj(
                {
                    "name": NAME,
                    "price": MONEY,
                    "vegetarian": BOOL,
                    "spicy_level": integer(0, 3),
                    "allergens": array(enum("gluten", "nuts", "dairy", "eggs", "soy", "fish"), 0, 3),
                }
            ),
        ),
        (
            "restaurant",
            "a restaurant listing",
            with_defs(
                obj(
                    {
                        "name": NAME,
                        "cuisine": enum("italian", "japanese", "mexican", "indian", "french", "other"),
                        "location": ref("geo"),
                        "rating": number(0, 5),
                        "price_range": enum("$", "$$", "$$$"),
                        "open_now": BOOL,
                    }
                ),
                geo=GEO,
            ),
        ),
        (
            "reservation",
            "a table reservation",
            obj(
                {
                    "name": NAME,
                    "party_size": integer(1, 20),
                    "date": DATE,
                    "time": TIME,
                    "phone": PHONE,
                    "notes": nullable(SHORT),
                },
                ["name", "party_size", "date", "time"],
            ),
        ),
        # Travel and places
        (
            "flight",
            "a flight",
            obj(
                {
                    "flight_number": string(pattern="^[A-Z]{2}[0-9]{2,4}$"),
                    "from": string(pattern="^[A-Z]{3}$"),
                    "to": string(pattern="^[A-Z]{3}$"),
                    "departure": DATETIME,
                    "arrival": DATETIME,
                    "status": enum("scheduled", "boarding", "departed", "landed", "cancelled"),
                }
            ),
        ),
        (
            "booking",
            "a hotel booking",
            obj(
                {
                    "booking_id": string(pattern="^[A-Z0-9]{8}$"),
                    "hotel": NAME,
                    "check_in": DATE,
                    "check_out": DATE,
                    "guests": integer(1, 8),
                    "room_type": enum("single", "double", "suite"),
                    "breakfast": BOOL,
                }
            ),
        ),
        (
            "trip",
            "a trip itinerary",
            with_defs(
                obj({"title": SHORT, "days": array(ref("day"), 1, 3)}),
                day=obj({"date": DATE, "city": SHORT, "activities": array(SHORT, 1, 3)}),
            ),
        ),
        (
            "place",
            "a point of interest",
            obj(
                {
                    "name": NAME,
                    "category": enum("museum", "park", "restaurant", "shop", "landmark"),
                    "position": GEO,
                    "address": ADDRESS,
                },
                ["name", "category", "position"],
            ),
        ),
        (
            "route",
            "a route between two points",
            with_defs(
                obj(
                    {
                        "from": ref("geo"),
                        "to": ref("geo"),
                        "distance_km": number(0, 20000),
                        "mode": enum("walk", "bike", "car", "train"),
                    }
                ),
                geo=GEO,
            ),
        ),
        (
            "weather",
            "a weather report",
            obj(
                {
                    "city": SHORT,
                    "temperature_c": number(-90, 60),
                    "humidity": integer(0, 100),
                    "conditions": enum("sunny", "cloudy", "rain", "snow", "fog", "storm"),
                    "wind_kph": number(0, 400),
                }
            ),
        ),
        (
            "forecast",
            "a three-day forecast",
            obj(
                {
                    "location": SHORT,
                    "days": array(
                        obj(
                            {
                                "date": DATE,
                                "high_c": number(-90, 60),
                                "low_c": number(-90, 60),
                                "rain_chance": integer(0, 100),
                            }
                        ),
                        1,
                        3,
                    ),
                }
            ),
        ),
        (
            "weather_alert",
            "a weather alert",
            obj(
                {
                    "id": UUID,
                    "severity": enum("minor", "moderate", "severe", "extreme"),
                    "event": SHORT,
                    "areas": array(SHORT, 1, 3),
                    "effective": DATETIME,
                    "expires": DATETIME,
                }
            ),
        ),
        (
            "car_rental",
            "a car rental",
            obj(
                {
                    "pickup": DATETIME,
                    "dropoff": DATETIME,
                    "car_class": enum("economy", "compact", "suv", "van"),
                    "driver_age": integer(18, 99),
                    "insurance": BOOL,
                }
            ),
        ),
        (
            "train_ticket",
            "a train ticket",
            obj(
                {
                    "ticket_id": string(pattern="^[0-9]{10}$"),
                    "origin": SHORT,
                    "destination": SHORT,
                    "departure": DATETIME,
                    "coach": integer(1, 20),
                    "seat": string(pattern="^[0-9]{1,3}[A-D]$"),
                    "class": enum("first", "second"),
                }
            ),
        ),
        (
            "parking",
            "a parking session",
            obj(
                {
                    "plate": string(pattern="^[A-Z0-9-]{4,10}$"),
                    "zone": integer(1, 99),
                    "start": DATETIME,
                    "minutes": integer(1, 1440),
                    "fee": MONEY,
                }
            ),
        ),
        (
            "real_estate",
            "a real estate listing",
            obj(
                {
                    "listing_id": integer(1),
                    "kind": enum("apartment", "house", "land"),
                    "bedrooms": integer(0, 10),
                    "area_m2": number(1, 10000),
                    "price": MONEY,
                    "address": ADDRESS,
                    "features": array(enum("garden", "garage", "balcony", "pool", "elevator"), 0, 3),
                }
            ),
        ),
        # Media and content
        (
            "book",
            "a book",
            obj(
                {
                    "title": NAME,
                    "author": NAME,
                    "isbn": string(pattern="^97[89][0-9]{10}$"),
                    "year": integer(1450, 2026),
                    "pages": integer(1, 5000),
                }
            ),
        ),
        (
            "movie",
            "a movie",
            obj(
                {
                    "title": NAME,
                    "year": integer(1888, 2026),
                    "genres": array(enum("drama", "comedy", "action", "horror", "documentary", "animation"), 1, 3),
                    "runtime_min": integer(1, 600),
                    "rating": number(0, 10),
                }
            ),
        ),
        ("song", "a song", obj({"title": NAME, "artist": NAME, "duration_s": integer(1, 3600), "explicit": BOOL})),
        (
            "album",
            "a music album",
            with_defs(
                obj({"title": NAME, "artist": NAME, "released": DATE, "tracks": array(ref("track"), 1, 4)}),
                track=obj({"number": integer(1, 99), "title": SHORT, "seconds": integer(1, 3600)}),
            ),
        ),
        (
            "playlist",
            "a playlist",
            obj({"name": SHORT, "public": BOOL, "tracks": array(obj({"title": SHORT, "artist": SHORT}), 0, 4)}),
        ),
        (
            "podcast_episode",
            "a podcast episode",
            obj(
                {
                    "show": SHORT,
                    "episode": integer(1),
                    "title": NAME,
                    "published": DATE,
                    "duration_min": integer(1, 600),
                    "guests": array(NAME, 0, 3),
                }
            ),
        ),
        (
            "blog_post",
            "a blog post",
            obj(
                {
                    "slug": string(pattern="^[a-z0-9-]{3,40}$"),
                    "title": NAME,
                    "author": NAME,
                    "published_at": DATETIME,
                    "tags": array(string(pattern="^[a-z]{2,12}$"), 0, 4),
                    "draft": BOOL,
                }
            ),
        ),
        (
            "comment",
            "a comment",
            obj(
                {
                    "id": integer(1),
                    "post_id": integer(1),
                    "author": SHORT,
                    "text": TEXT,
                    "created_at": DATETIME,
                    "parent_id": nullable(integer(1)),
                }
            ),
        ),
        (
            "news_article",
            "a news article summary",
            obj(
                {
                    "headline": TEXT,
                    "section": enum("world", "business", "sports", "science", "culture"),
                    "published": DATE,
                    "summary": TEXT,
                    "url": URI,
                }
            ),
        ),
        (
            "recipe",
            "a recipe",
            with_defs(
                obj(
                    {
                        "title": NAME,
                        "servings": integer(1, 20),
                        "ingredients": array(ref("ingredient"), 1, 5),
                        "steps": array(TEXT, 1, 4),
                        "vegetarian": BOOL,
                    }
                ),
                ingredient=obj(
                    {"name": SHORT, "quantity": number(0, 1000), "unit": enum("g", "ml", "cup", "tbsp", "tsp", "piece")}
                ),
            ),
        ),
        (
            "image_metadata",
            "image metadata",
            obj(
                {
                    "filename": string(pattern="^[a-z0-9_-]{1,20}\\.(jpg|png|webp)$"),
                    "width": integer(1, 20000),
                    "height": integer(1, 20000),
                    "taken_at": nullable(DATETIME),
                    "camera": nullable(SHORT),
                }
            ),
        ),
        (
            "video",
            "a video",
            obj(
                {
                    "id": string(pattern="^[A-Za-z0-9_-]{11}$"),
                    "title": NAME,
                    "duration_s": integer(1),
                    "views": integer(0),
                    "channel": SHORT,
                    "captions": BOOL,
                }
            ),
        ),
        (
            "game",
            "a video game",
            obj(
                {
                    "title": NAME,
                    "platforms": array(enum("pc", "playstation", "xbox", "switch", "mobile"), 1, 3),
                    "release_year": integer(1970, 2026),
                    "multiplayer": BOOL,
                    "esrb": enum("E", "T", "M", "AO"),
                }
            ),
        ),
        ("quote", "a quotation", obj({"text": TEXT, "author": NAME, "year": nullable(integer(-500, 2026))})),
        (
            "translation",
            "a translation",
            obj(
                {
                    "source_lang": string(pattern="^[a-z]{2}$"),
                    "target_lang": string(pattern="^[a-z]{2}$"),
                    "source": TEXT,
                    "target": TEXT,
                }
            ),
        ),
        (
            "summary",
            "a document summary",
            obj(
                {
                    "title": NAME,
                    "key_points": array(TEXT, 1, 3),
                    "sentiment": enum("positive", "neutral", "negative"),
                    "word_count": integer(0),
                }
            ),
        ),
        # Software and operations
        (
            "log_entry",
            "a log entry",
            obj(
                {
                    "timestamp": DATETIME,
                    "level": enum("DEBUG", "INFO", "WARN", "ERROR"),
                    "service": SHORT,
                    "message": TEXT,
                    "request_id": nullable(UUID),
                }
            ),
        ),
        (
            "http_request",
            "an HTTP request",
            obj(
                {
                    "method": enum("GET", "POST", "PUT", "DELETE", "PATCH"),
                    "url": URI,
                    "headers": {"type": "object", "additionalProperties": SHORT, "maxProperties": 3},
                    "timeout_s": number(0, 300),
                }
            ),
        ),
        (
            "http_response",
            "an HTTP response",
            obj(
                {
                    "status": integer(100, 599),
                    "content_type": enum("application/json", "text/html", "text/plain"),
                    "body_bytes": integer(0),
                    "cached": BOOL,
                }
            ),
        ),
        (
            "api_error",
            "an API error",
            obj(
                {
                    "code": integer(400, 599),
                    "error": string(pattern="^[A-Z_]{3,30}$"),
                    "message": TEXT,
                    "retryable": BOOL,
                }
            ),
        ),
        (
            "bug_report",
            "a bug report",
            obj(
                {
                    "title": NAME,
                    "severity": enum("low", "medium", "high", "critical"),
                    "component": SHORT,
                    "steps": array(TEXT, 1, 3),
                    "expected": TEXT,
                    "actual": TEXT,
                }
            ),
        ),
        (
            "pull_request",
            "a pull request",
            obj(
                {
                    "number": integer(1),
                    "title": NAME,
                    "author": string(pattern="^[a-z0-9-]{2,20}$"),
                    "base": SHORT,
                    "head": SHORT,
                    "draft": BOOL,
                    "labels": array(enum("bug", "feature", "docs", "chore"), 0, 2),
                }
            ),
        ),
        (
            "commit",
            "a git commit",
            obj(
                {
                    "sha": string(pattern="^[0-9a-f]{40}$"),
                    "author": NAME,
                    "email": EMAIL,
                    "date": DATETIME,
                    "message": TEXT,
                }
            ),
        ),
        (
            "server",
            "a server inventory entry",
            obj(
                {
                    "hostname": HOSTNAME,
                    "ip": IPV4,
                    "ipv6": nullable(IPV6),
                    "os": enum("linux", "windows", "bsd"),
                    "cpus": integer(1, 512),
                    "memory_gb": integer(1, 8192),
                }
            ),
        ),
        (
            "dns_record",
            "a DNS record",
            obj(
                {
                    "name": HOSTNAME,
                    "type": enum("A", "AAAA", "CNAME", "MX", "TXT"),
                    "value": SHORT,
                    "ttl": integer(60, 86400),
                }
            ),
        ),
        (
            "firewall_rule",
            "a firewall rule",
            obj(
                {
                    "action": enum("allow", "deny"),
                    "protocol": enum("tcp", "udp", "icmp"),
                    "source": IPV4,
                    "port": integer(1, 65535),
                    "comment": nullable(SHORT),
                }
            ),
        ),
        (
            "deployment",
            "a deployment",
            obj(
                {
                    "service": SHORT,
                    "version": string(pattern="^v?[0-9]+\\.[0-9]+\\.[0-9]+$"),
                    "environment": enum("dev", "staging", "production"),
                    "replicas": integer(1, 100),
                    "started_at": DATETIME,
                    "healthy": BOOL,
                }
            ),
        ),
        (
            "feature_flag",
            "a feature flag",
            obj(
                {
                    "key": string(pattern="^[a-z][a-z0-9_]{2,30}$"),
                    "enabled": BOOL,
                    "rollout_percent": integer(0, 100),
                    "owners": array(EMAIL, 1, 2),
                }
            ),
        ),
        (
            "config",
            "a service configuration",
            with_defs(
                obj(
                    {
                        "name": SHORT,
                        "port": integer(1, 65535),
                        "database": ref("database"),
                        "log_level": enum("debug", "info", "warning", "error"),
                        "workers": integer(1, 64),
                    }
                ),
                database=obj(
                    {"host": HOSTNAME, "port": integer(1, 65535), "user": SHORT, "pool_size": integer(1, 100)}
                ),
            ),
        ),
        (
            "metric",
            "a metric sample",
            obj(
                {
                    "name": string(pattern="^[a-z_]{3,40}$"),
                    "value": number(),
                    "unit": enum("ms", "bytes", "count", "percent"),
                    "labels": {"type": "object", "additionalProperties": SHORT, "maxProperties": 3},
                    "timestamp": DATETIME,
                }
            ),
        ),
        (
            "incident",
            "an incident report",
            obj(
                {
                    "id": string(pattern="^INC-[0-9]{4}$"),
                    "started": DATETIME,
                    "resolved": nullable(DATETIME),
                    "impact": enum("none", "minor", "major", "critical"),
                    "services": array(SHORT, 1, 3),
                    "summary": TEXT,
                }
            ),
        ),
        (
            "cron_job",
            "a scheduled job",
            obj(
                {
                    "name": SHORT,
                    "schedule": string(pattern="^[0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+$"),
                    "command": TEXT,
                    "enabled": BOOL,
                }
            ),
        ),
        (
            "package",
            "a software package",
            obj(
                {
                    "name": string(pattern="^[a-z0-9-]{2,30}$"),
                    "version": string(pattern="^[0-9]+\\.[0-9]+\\.[0-9]+$"),
                    "license": enum("MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0"),
                    "dependencies": array(SHORT, 0, 4),
                }
            ),
        ),
        (
            "tool_call",
            "a function call",
            obj(
                {
                    "name": enum("get_weather", "search", "send_email", "create_event"),
                    "arguments": obj({"query": SHORT, "limit": integer(1, 50)}, ["query"]),
                }
            ),
        ),
        (
            "chat_message",
            "a chat message",
            obj({"role": enum("user", "assistant", "system"), "content": TEXT, "sent_at": DATETIME}),
        ),
        (
            "email",
            "an email",
            obj(
                {
                    "from": EMAIL,
                    "to": array(EMAIL, 1, 3),
                    "subject": NAME,
                    "body": TEXT,
                    "priority": enum("low", "normal", "high"),
                }
            ),
        ),
        (
            "notification",
            "a push notification",
            obj({"user_id": integer(1), "title": SHORT, "body": TEXT, "deep_link": nullable(URI), "silent": BOOL}),
        ),
        (
            "webhook",
            "a webhook event",
            obj(
                {
                    "event": enum("created", "updated", "deleted"),
                    "resource": enum("user", "order", "invoice"),
                    "id": UUID,
                    "occurred_at": DATETIME,
                    "attempt": integer(1, 10),
                }
            ),
        ),
        (
            "api_key",
            "an API key",
            obj(
                {
                    "key_id": string(pattern="^ak_[a-z0-9]{8}$"),
                    "scopes": array(enum("read", "write", "admin"), 1, 3),
                    "expires": nullable(DATE),
                    "revoked": BOOL,
                }
            ),
        ),
        (
            "session_token",
            "a session",
            obj({"session_id": UUID, "user_id": integer(1), "ip": IPV4, "user_agent": SHORT, "expires_at": DATETIME}),
        ),
        # Work, schools, calendars
        (
            "task",
            "a to-do item",
            obj({"title": NAME, "done": BOOL, "due": nullable(DATE), "priority": enum("low", "medium", "high")}),
        ),
        (
            "project",
            "a project",
            with_defs(
                obj(
                    {
                        "name": NAME,
                        "status": enum("planned", "active", "done", "cancelled"),
                        "owner": ref("person"),
                        "milestones": array(obj({"name": SHORT, "due": DATE}), 0, 3),
                    }
                ),
                person=PERSON,
            ),
        ),
        (
            "calendar_event",
            "a calendar event",
            obj(
                {
                    "title": NAME,
                    "start": DATETIME,
                    "end": DATETIME,
                    "location": nullable(SHORT),
                    "attendees": array(EMAIL, 0, 3),
                    "all_day": BOOL,
                }
            ),
        ),
        (
            "meeting_notes",
            "meeting notes",
            obj(
                {
                    "date": DATE,
                    "attendees": array(NAME, 1, 4),
                    "decisions": array(TEXT, 0, 3),
                    "action_items": array(obj({"owner": NAME, "task": TEXT}), 0, 3),
                }
            ),
        ),
        (
            "job_posting",
            "a job posting",
            obj(
                {
                    "title": NAME,
                    "company": NAME,
                    "location": SHORT,
                    "remote": BOOL,
                    "salary_min": integer(0),
                    "salary_max": integer(0),
                    "level": enum("junior", "mid", "senior", "lead"),
                }
            ),
        ),
        (
            "resume",
            "a resume",
            with_defs(
                obj(
                    {"name": NAME, "email": EMAIL, "skills": array(SHORT, 1, 5), "experience": array(ref("job"), 0, 2)}
                ),
                job=obj({"company": SHORT, "title": SHORT, "from": DATE, "to": nullable(DATE)}),
            ),
        ),
        (
            "timesheet",
            "a timesheet entry",
            obj({"employee_id": integer(1), "date": DATE, "hours": number(0, 24), "project": SHORT, "billable": BOOL}),
        ),
        (
            "expense",
            "an expense claim",
            obj(
                {
                    "date": DATE,
                    "category": enum("travel", "meals", "lodging", "supplies"),
                    "amount": MONEY,
                    "currency": CURRENCY,
                    "receipt": BOOL,
                }
            ),
        ),
        (
            "student",
            "a student",
            obj(
                {
                    "student_id": string(pattern="^S[0-9]{7}$"),
                    "name": NAME,
                    "year": integer(1, 6),
                    "major": SHORT,
                    "gpa": number(0, 4),
                }
            ),
        ),
        (
            "course",
            "a university course",
            obj(
                {
                    "code": string(pattern="^[A-Z]{3,4} ?[0-9]{3}$"),
                    "title": NAME,
                    "credits": integer(1, 10),
                    "instructor": NAME,
                    "capacity": integer(1, 500),
                }
            ),
        ),
        (
            "grade",
            "a grade",
            obj(
                {
                    "student_id": SHORT,
                    "course": SHORT,
                    "grade": enum("A", "B", "C", "D", "F"),
                    "term": string(pattern="^(spring|summer|fall) [0-9]{4}$"),
                }
            ),
        ),
        (
            "quiz_question",
            "a quiz question",
            obj(
                {
                    "question": TEXT,
                    "options": array(SHORT, 2, 4),
                    "answer_index": integer(0, 3),
                    "difficulty": enum("easy", "medium", "hard"),
                }
            ),
        ),
        (
            "survey_response",
            "a survey response",
            obj(
                {
                    "respondent": UUID,
                    "satisfaction": integer(1, 10),
                    "would_recommend": BOOL,
                    "comments": nullable(TEXT),
                }
            ),
        ),
        (
            "poll",
            "a poll",
            obj(
                {
                    "question": TEXT,
                    "options": array(obj({"label": SHORT, "votes": integer(0)}), 2, 4),
                    "closes": DATETIME,
                }
            ),
        ),
        # Finance
        (
            "bank_transaction",
            "a bank transaction",
            obj(
                {
                    "id": UUID,
                    "date": DATE,
                    "amount": number(-1_000_000, 1_000_000),
                    "currency": CURRENCY,
                    "counterparty": NAME,
                    "category": enum("groceries", "rent", "salary", "transport", "other"),
                }
            ),
        ),
        (
            "account",
            "a bank account",
            obj(
                {
                    "iban": string(pattern="^[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}$"),
                    "holder": NAME,
                    "balance": number(),
                    "currency": CURRENCY,
                    "overdraft": BOOL,
                }
            ),
        ),
        (
            "stock_quote",
            "a stock quote",
            obj(
                {
                    "symbol": string(pattern="^[A-Z]{1,5}$"),
                    "price": MONEY,
                    "change_percent": number(-100, 1000),
                    "volume": integer(0),
                    "as_of": DATETIME,
                }
            ),
        ),
        (
            "budget",
            "a monthly budget",
            obj(
                {
                    "month": string(pattern="^[0-9]{4}-[0-9]{2}$"),
                    "income": MONEY,
                    "categories": array(obj({"name": SHORT, "limit": MONEY}), 1, 4),
                }
            ),
        ),
        (
            "loan",
            "a loan application",
            obj(
                {
                    "applicant": NAME,
                    "amount": MONEY,
                    "term_months": integer(6, 360),
                    "purpose": enum("home", "car", "education", "business", "other"),
                    "annual_income": MONEY,
                    "employed": BOOL,
                }
            ),
        ),
        (
            "crypto_transfer",
            "a crypto transfer",
            obj(
                {
                    "tx_hash": string(pattern="^0x[0-9a-f]{64}$"),
                    "from": string(pattern="^0x[0-9a-f]{40}$"),
                    "to": string(pattern="^0x[0-9a-f]{40}$"),
                    "amount": number(0),
                    "confirmed": BOOL,
                }
            ),
        ),
        (
            "tax_form",
            "a tax summary",
            obj(
                {
                    "year": integer(2000, 2026),
                    "gross_income": MONEY,
                    "deductions": MONEY,
                    "filing_status": enum("single", "married_joint", "married_separate", "head_of_household"),
                    "refund": number(),
                }
            ),
        ),
        # Health, sport, devices
        (
            "appointment",
            "a medical appointment",
            obj({"patient": NAME, "doctor": NAME, "at": DATETIME, "reason": SHORT, "telehealth": BOOL}),
        ),
        (
            "prescription",
            "a prescription",
            obj(
                {
                    "drug": SHORT,
                    "dose_mg": number(0, 5000),
                    "times_per_day": integer(1, 6),
                    "days": integer(1, 365),
                    "refills": integer(0, 12),
                }
            ),
        ),
        (
            "lab_result",
            "a lab result",
            obj(
                {
                    "test": enum("glucose", "cholesterol", "hemoglobin", "creatinine"),
                    "value": number(0, 1000),
                    "unit": enum("mg/dL", "g/dL", "mmol/L"),
                    "flag": enum("low", "normal", "high"),
                    "collected": DATETIME,
                }
            ),
        ),
        (
            "workout",
            "a workout",
            obj(
                {
                    "date": DATE,
                    "activity": enum("run", "ride", "swim", "lift", "yoga"),
                    "minutes": integer(1, 600),
                    "distance_km": nullable(number(0, 500)),
                    "calories": integer(0, 10000),
                }
            ),
        ),
        (
            "sports_match",
            "a football match result",
            with_defs(
                obj({"home": ref("side"), "away": ref("side"), "date": DATE, "stadium": SHORT}),
                side=obj({"team": SHORT, "goals": integer(0, 20)}),
            ),
        ),
        (
            "player",
            "a football player",
            obj(
                {
                    "name": NAME,
                    "position": enum("goalkeeper", "defender", "midfielder", "forward"),
                    "number": integer(1, 99),
                    "nationality": COUNTRY,
                    "goals": integer(0),
                }
            ),
        ),
        (
            "sensor_reading",
            "a sensor reading",
            obj(
                {
                    "device_id": string(pattern="^dev-[0-9a-f]{6}$"),
                    "at": DATETIME,
                    "temperature_c": number(-50, 150),
                    "humidity": number(0, 100),
                    "battery": integer(0, 100),
                }
            ),
        ),
        (
            "iot_device",
            "an IoT device",
            with_defs(
                obj(
                    {
                        "id": UUID,
                        "model": SHORT,
                        "firmware": string(pattern="^[0-9]+\\.[0-9]+$"),
                        "network": ref("network"),
                        "online": BOOL,
                    }
                ),
                network=obj({"ip": IPV4, "mac": string(pattern="^([0-9a-f]{2}:){5}[0-9a-f]{2}$"), "wifi": BOOL}),
            ),
        ),
        (
            "vehicle",
            "a vehicle",
            obj(
                {
                    "vin": string(pattern="^[A-HJ-NPR-Z0-9]{17}$"),
                    "make": SHORT,
                    "model": SHORT,
                    "year": integer(1900, 2027),
                    "fuel": enum("petrol", "diesel", "electric", "hybrid"),
                    "mileage_km": integer(0),
                }
            ),
        ),
        (
            "pet",
            "a pet",
            obj(
                {
                    "name": SHORT,
                    "species": enum("dog", "cat", "bird", "fish", "rabbit"),
                    "age_years": integer(0, 40),
                    "vaccinated": BOOL,
                    "owner": PERSON,
                }
            ),
        ),
        (
            "plant",
            "a garden plant",
            obj(
                {
                    "common_name": SHORT,
                    "latin_name": SHORT,
                    "sunlight": enum("full", "partial", "shade"),
                    "water_per_week_ml": integer(0, 10000),
                    "perennial": BOOL,
                }
            ),
        ),
        # Extraction and classification (typical pipeline outputs)
        (
            "sentiment",
            "a sentiment label",
            obj({"label": enum("positive", "negative", "neutral"), "confidence": number(0, 1)}),
        ),
        (
            "entities",
            "named entities",
            obj({"entities": array(obj({"text": SHORT, "type": enum("PERSON", "ORG", "LOC", "DATE")}), 0, 4)}),
        ),
        (
            "classification",
            "a support ticket triage",
            obj(
                {
                    "category": enum("billing", "technical", "account", "other"),
                    "urgency": enum("low", "normal", "urgent"),
                    "language": string(pattern="^[a-z]{2}$"),
                    "needs_human": BOOL,
                }
            ),
        ),
        (
            "extraction_invoice",
            "fields extracted from an invoice",
            obj(
                {"vendor": NAME, "invoice_date": DATE, "total": MONEY, "tax": nullable(MONEY), "currency": CURRENCY},
                ["vendor", "total"],
            ),
        ),
        ("keywords", "keywords of a text", obj({"keywords": array(string(pattern="^[a-z ]{2,20}$"), 1, 5)})),
        ("yes_no", "a yes/no answer with a reason", obj({"answer": BOOL, "reason": TEXT})),
        ("rating_scale", "a rating", obj({"score": integer(1, 10), "explanation": TEXT})),
        ("address_parse", "a parsed postal address", ADDRESS),
        ("date_range", "a date range", obj({"start": DATE, "end": DATE})),
        ("geo_point", "a location", GEO),
        (
            "color",
            "a color",
            obj({"name": SHORT, "hex": string(pattern="^#[0-9a-f]{6}$"), "rgb": array(integer(0, 255), 3, 3)}),
        ),
        (
            "tree_node",
            "a category tree node",
            with_defs(ref("node"), node=obj({"name": SHORT, "children": array(ref("node"), 0, 2)})),
        ),
        (
            "org_chart",
            "an org chart entry",
            with_defs(
                ref("employee"), employee=obj({"name": NAME, "title": SHORT, "reports": array(ref("employee"), 0, 2)})
            ),
        ),
        ("open_record", "a free-form record with an id", obj({"id": integer(1), "kind": SHORT}, closed=False)),
        (
            "mixed_value",
            "a setting value",
            obj(
                {
                    "key": SHORT,
                    "value": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "number"}, {"type": "boolean"}]},
                }
            ),
        ),
        (
            "one_of_shape",
            "a shape",
            {
                "oneOf": [
                    obj({"kind": {"const": "circle"}, "radius": number(0, 100)}),
                    obj({"kind": {"const": "rect"}, "width": number(0, 100), "height": number(0, 100)}),
                ]
            },
        ),
        ("tagged_list", "a list of tags", array(string(pattern="^[a-z]{2,10}$"), 1, 5)),
        ("matrix", "a 2x2 matrix", array(array(number(-10, 10), 2, 2), 2, 2)),
        (
            "optional_fields",
            "a profile with optional fields",
            obj({"name": NAME, "nickname": SHORT, "website": URI, "bio": TEXT}, ["name"]),
        ),
    ]


# -- the generated schemas ---------------------------------------------------------------------------------------------
# hypothesis-jsonschema draws instances of META, which describe schemas as nested arrays (its object strategy needs a
# Hypothesis internal that the pinned Hypothesis no longer has; its array, string and number strategies do not):
#   root:  ["object", [field, ...]] or ["list", [field, ...], min_items, max_items]
#   field: [name, required, value]; value: a leaf, ["array", leaf, min, max] or ["object", [leaf field, ...]]
#   leaf:  ["string", max_length] | ["format", f] | ["pattern", p] | ["integer", lo, hi] | ["number", lo, hi]
#          | ["boolean"] | ["null"] | ["enum", [s, ...]] | ["const", s]
# and `decode` turns one into the JSON Schema it describes.

_FORMATS = ("date", "date-time", "time", "email", "uuid", "ipv4", "uri", "hostname")
_PATTERNS = ("^[a-z]{1,8}$", "^[A-Z][a-z]{1,10}$", "^[0-9]{3,6}$", "^[A-Z]{2}-[0-9]{2,4}$")


def _tuple(*items: Schema) -> Schema:
    return {"type": "array", "items": list(items), "additionalItems": False, "minItems": len(items)}


def _const(value: str) -> Schema:
    return {"const": value}


_WORD = string(pattern="^[a-z]{1,8}$")
_LEAF: Schema = {
    "anyOf": [
        _tuple(_const("string"), integer(1, 30)),
        _tuple(_const("format"), enum(*_FORMATS)),
        _tuple(_const("pattern"), enum(*_PATTERNS)),
        _tuple(_const("integer"), integer(-1000, 0), integer(1, 1000)),
        _tuple(_const("number"), integer(-100, 0), integer(1, 100)),
        _tuple(_const("boolean")),
        _tuple(_const("null")),
        _tuple(_const("enum"), array(_WORD, 1, 5)),
        _tuple(_const("const"), _WORD),
    ]
}
_NAME = string(pattern="^[a-z][a-z_]{0,11}$")
_ARRAY = _tuple(_const("array"), _LEAF, integer(0, 1), integer(1, 4))
_LEAF_FIELD = _tuple(_NAME, BOOL, {"anyOf": [_LEAF, _ARRAY]})
_NESTED = _tuple(_const("object"), array(_LEAF_FIELD, 1, 4))
_FIELD = _tuple(_NAME, BOOL, {"anyOf": [_LEAF, _ARRAY, _NESTED]})
META: Schema = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "anyOf": [
        _tuple(_const("object"), array(_FIELD, 1, 6)),
        _tuple(_const("list"), array(_LEAF_FIELD, 1, 4), integer(0, 1), integer(1, 3)),
    ],
}
"""Descriptions of object schemas (or arrays of objects) two levels deep: typed leaves with bounds, formats,
patterns, enums and consts, arrays of them, nested objects, each property required or not."""


def decode(description: list[Any]) -> Schema:
    """The JSON Schema a META instance describes (a repeated property name keeps its first value)."""
    kind, *rest = description
    if kind == "list":
        fields, low, high = rest
        return array(decode(["object", fields]), low, high)
    if kind == "object":
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for name, needed, value in rest[0]:
            if name not in properties:
                properties[name] = decode(value)
                required += [name] if needed else []
        return obj(properties, required)
    if kind == "array":
        leaf, low, high = rest
        return array(decode(leaf), low, high)
    leaves: dict[str, Any] = {
        "string": lambda: string(maxLength=rest[0]),
        "format": lambda: string(format=rest[0]),
        "pattern": lambda: string(pattern=rest[0]),
        "integer": lambda: integer(rest[0], rest[1]),
        "number": lambda: number(rest[0], rest[1]),
        "boolean": lambda: dict(BOOL),
        "null": lambda: {"type": "null"},
        "enum": lambda: enum(*dict.fromkeys(rest[0])),
        "const": lambda: {"const": rest[0]},
    }
    schema: Schema = leaves[kind]()
    return schema


def generated(count: int) -> list[Schema]:
    """`count` distinct schemas drawn from META (derandomized: the same ones each run), each one llguidance compiles.

    Hypothesis draws small examples first: of all it draws, `count` are kept evenly spread from the smallest to the
    largest (by their JSON's length).
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis_jsonschema import from_schema
    from llguidance import LLMatcher

    from rillet.server.engine.constraints import JSON_OPTIONS

    drawn: dict[str, Schema] = {}

    @settings(
        database=None,
        derandomize=True,
        max_examples=count * 25,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(from_schema(META))
    def draw(description: list[Any]) -> None:
        schema = decode(description)
        text = json.dumps(schema, sort_keys=True)
        grammar = LLMatcher.grammar_from_json_schema(text, defaults=JSON_OPTIONS)
        if text not in drawn and not LLMatcher.validate_grammar(grammar, None):
            drawn[text] = schema

    draw()
    by_size = sorted(drawn, key=lambda text: (len(text), text))
    step = len(by_size) / count
    return [drawn[by_size[int(index * step)]] for index in range(count)]


def main() -> None:
    entries = [Entry(name, "realistic", description, schema) for name, description, schema in realistic()]
    for index, schema in enumerate(generated(GENERATED)):
        entries.append(Entry(f"generated_{index:03d}", "generated", "a record", schema))
    CORPUS.write_text(json.dumps([dataclasses.asdict(entry) for entry in entries], indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(entries)} schemas to {CORPUS}")


if __name__ == "__main__":
    main()
