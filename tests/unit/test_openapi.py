"""The OpenAPI document: the committed file is the generated one, and its request schemas accept exactly
what ``online.service.validation`` accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from online.service import validation as V
from online.service.errors import ServiceError
from online.service.openapi import build_openapi, dumps

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
MAX = V.MAX_USERID

ACCEPTED: list[Any] = [
    {"userid": 1},
    {"userid": 0, "size": 1},
    {"userid": MAX, "size": 200},
    {"userid": 5, "fields": []},
    {"userid": 5, "fields": ["genres", "title"]},
    {"userid": 5, "explain": True, "size": 3},
    {"userid": 5, "explain": None, "size": None, "fields": None},
]
REFUSED: list[Any] = [
    {},
    [1],
    "userid",
    {"userid": -1},
    {"userid": MAX + 1},
    {"userid": "1"},
    {"userid": True},
    {"userid": 1.5},
    {"userid": 1, "size": 0},
    {"userid": 1, "size": 201},
    {"userid": 1, "sise": 3},
    {"userid": 1, "fields": "title"},
    {"userid": 1, "fields": ["title", "title"]},
    {"userid": 1, "fields": ["rating"]},
    {"userid": 1, "fields": [1]},
    {"userid": 1, "fields": {"title": True}},
    {"userid": 1, "explain": "yes"},
    {"userid": 1, "explain": 1},
]


def rec_schema() -> dict[str, Any]:
    return build_openapi(max_size=200)["components"]["schemas"]["RecRequest"]


def accepted_by_validation(body: Any) -> bool:
    try:
        V.parse_rec_request(json.dumps(body).encode(), 50, 200)
    except ServiceError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return False
    return True


def test_the_committed_document_is_the_generated_one() -> None:
    committed = (REPO / "online" / "openapi.json").read_text()
    assert committed == dumps(build_openapi()), "regenerate: python -m online.service.openapi > online/openapi.json"


def test_the_document_is_valid_openapi_3_1() -> None:
    import schemathesis

    document = build_openapi()
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert {"POST /ml/rec", "GET /ml/users/{userid}/history", "GET /ml/items", "GET /health"} <= operations


@pytest.mark.parametrize("body", ACCEPTED + REFUSED, ids=lambda b: json.dumps(b)[:50])
def test_the_schema_and_the_validation_agree(body: Any) -> None:
    schema_ok = jsonschema_rs.Draft202012Validator(rec_schema()).is_valid(body)
    expected = json.dumps(body) in {json.dumps(b) for b in ACCEPTED}  # not `in`: True == 1 in Python
    assert schema_ok == accepted_by_validation(body) == expected


def test_the_document_follows_the_servers_max_size() -> None:
    assert build_openapi(max_size=30)["components"]["schemas"]["RecRequest"]["properties"]["size"]["maximum"] == 30


def test_examples_match_their_schemas() -> None:
    document = build_openapi()
    registry_doc = {"components": document["components"]}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                media = response.get("content", {}).get("application/json", {})
                if "example" not in media:
                    continue
                schema = {**media["schema"], "components": registry_doc["components"]}
                errors = list(jsonschema_rs.Draft202012Validator(schema).iter_errors(media["example"]))
                assert not errors, f"{method} {path} {status}: {errors[0]}"
    for name, example in document["paths"]["/ml/rec"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ].items():
        assert accepted_by_validation(example["value"]), name


@pytest.mark.parametrize(
    ("userid", "args", "expected"),
    [
        ("1", {}, (1, V.DEFAULT_HISTORY_SIZE)),
        ("0", {"size": "100"}, (0, 100)),
        (str(MAX), {"size": "1"}, (MAX, 1)),
        ("-1", {}, None),
        ("1.0", {}, None),
        ("abc", {}, None),
        (str(MAX + 1), {}, None),
        ("١", {}, None),  # a non-ASCII digit
        ("1", {"size": "0"}, None),
        ("1", {"size": "101"}, None),
        ("1", {"limit": "3"}, None),
    ],
)
def test_history_parameters(userid: str, args: dict[str, str], expected: tuple[int, int] | None) -> None:
    if expected is None:
        with pytest.raises(ServiceError) as info:
            V.parse_history_request(userid, args)
        assert info.value.status == 422
    else:
        req = V.parse_history_request(userid, args)
        assert (req.userid, req.size) == expected


def test_items_parameters() -> None:
    assert V.parse_items_request({}) == V.ItemsRequest("", V.DEFAULT_ITEMS_SIZE)
    assert V.parse_items_request({"q": "alien", "size": "3"}) == V.ItemsRequest("alien", 3)
    for bad in ({"q": "x" * 101}, {"size": "0"}, {"size": "x"}, {"query": "alien"}):
        with pytest.raises(ServiceError, match="'q'|'size'|unknown query"):
            V.parse_items_request(bad)


def test_fields_are_returned_in_a_fixed_order() -> None:
    req = V.parse_rec_request(b'{"userid": 1, "fields": ["genres", "title"], "explain": true}', 50, 200)
    assert req.fields == ("title", "genres") and req.explain is True
    default = V.parse_rec_request(b'{"userid": 1}', 50, 200)
    assert default.fields == ("title", "year", "genres") and default.explain is False


EVENT = {"userid": 1, "itemid": 2, "timestamp": 978300760, "event_id": "e-1"}
EVENTS_ACCEPTED: list[Any] = [
    EVENT | {"type": "like"},
    EVENT | {"rating": 4.5},
    EVENT | {"rating": 1, "type": None},
    EVENT | {"type": "dislike", "rating": None},
]
EVENTS_REFUSED: list[Any] = [
    EVENT,  # neither rating nor type
    EVENT | {"type": "like", "rating": 5},  # both
    EVENT | {"type": "love"},
    EVENT | {"rating": 0.1},
    EVENT | {"rating": 5.5},
    EVENT | {"type": "like", "event_id": "has space"},
    EVENT | {"type": "like", "timestamp": -1},
    EVENT | {"type": "like", "extra": 1},
    {"userid": 1, "itemid": 2, "type": "like"},
]


@pytest.mark.parametrize("body", EVENTS_ACCEPTED + EVENTS_REFUSED, ids=lambda b: json.dumps(b)[:60])
def test_the_event_schema_and_the_event_validation_agree(body: Any) -> None:
    from online.service.event_validation import parse_event

    document = build_openapi()
    schema = {"$ref": "#/components/schemas/Event", "components": document["components"]}
    try:
        parse_event(body)
        accepted = True
    except ServiceError:
        accepted = False
    expected = json.dumps(body) in {json.dumps(b) for b in EVENTS_ACCEPTED}
    assert jsonschema_rs.Draft202012Validator(schema).is_valid(body) == accepted == expected
