"""Bad input for every field of every request body (and the search query):
400 with a JSON error naming the field, and the server serves on. A field
added to a schema without a case here fails the coverage check."""


import pytest

# (operation, field) -> a bad value. Every property of every documented
# request body must appear.
BAD = {
    ("accounts_register", "name"): "Not Valid!",
    ("accounts_register", "password"): "short",
    ("accounts_register", "role"): "operator",
    ("accounts_register", "terms_version"): "1999-01",
    ("accounts_register", "accept_terms"): False,
    ("accounts_register", "display_name"): "",
    ("accounts_register", "photo_url"): "ftp://example.com/me.png",
    ("accounts_register", "gender"): "robot",
    ("accounts_register", "region"): "spain",
    ("accounts_register", "digital_human"): "yes",
    ("auth_login", "name"): 5,
    ("auth_login", "password"): None,
    ("auth_refresh", "refresh_token"): 7,
    ("me_edit", "display_name"): "x" * 1000,
    ("me_edit", "photo_url"): "not a url",
    ("me_edit", "gender"): "robot",
    ("me_edit", "region"): "es",
    ("me_exit", "password"): 1,
    ("me_exit", "confirm"): False,
    ("me_verification_request", "document_reference"): "",
    ("accounts_verification_decide", "state"): "maybe",
    ("accounts_verification_decide", "note"): "x" * 1000,
    ("accounts_digital_human_approve", "approved"): "yes",
    ("accounts_forced_exit", "reason"): "x",
    ("rooms_media_token", "publish"): "yes",
    ("rooms_shutdown", "reason"): "",
    ("rooms_rate", "positive"): 1,
    ("rooms_comment", "text"): "",
}
ROOM_BAD = {
    "title": "",
    "description": "x" * 5000,
    "scheduled_start": "tomorrow at noon",
    "duration_s": 5,
    "keywords": [" padded "],
    "hashtags": ["#no spaces"],
    "cover_image_url": "javascript:alert(1)",
    "orientation": "square",
    "language": "Spanish",
    "region": "ES1",
    "target_regions": ["xx"],
    "team": ["nobody_here"],
    "recording": "no",
}
for _op in ("rooms_create", "rooms_edit"):
    for _field, _value in ROOM_BAD.items():
        BAD[(_op, _field)] = _value
# Checks beyond the schema, with the field they must name.
SEMANTIC = [
    ("rooms_create", "scheduled_start", "2001-01-01T00:00:00Z"),
    ("rooms_create", "scheduled_start", "2999-01-01T00:00:00Z"),
    ("rooms_create", "hashtags", ["#Sale", "sale"]),
    ("rooms_create", "keywords", ["a", "a"]),
]


async def test_every_request_field_has_a_bad_input_case(api):
    doc = (await api.call("GET", "/api/v1/openapi.json")).body
    fields = set()
    for methods in doc["paths"].values():
        for operation in methods.values():
            # The commerce routes' fields are covered by tests/commerce/test_bad_input.py,
            # the statistics events' by tests/recording/test_statistics.py.
            if "requestBody" in operation and not {"commerce", "statistics"} & set(operation["tags"]):
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                fields |= {(operation["operationId"], f) for f in schema.get("properties", {})}
    assert fields - set(BAD) == set()
    assert set(BAD) - fields == set()


@pytest.fixture
async def world(api, room_fields):
    host = await api.user("hostess", "host")
    viewer = await api.user("viewer1", "audience")
    operator = await api.operator()
    room_id = (await api.call("POST", "/api/v1/rooms", room_fields(), token=host)).body["room"]["id"]
    terms = (await api.call("GET", "/api/v1/terms")).body["version"]
    return {"host": host, "viewer": viewer, "operator": operator, "room_id": room_id, "terms": terms}


def request_for(op, world, room_fields):
    """(method, path, token, valid body) of an operation."""
    room = world["room_id"]
    return {
        "accounts_register": ("POST", "/api/v1/accounts", None, {
            "name": "newbie", "password": "long enough pw", "role": "host",
            "terms_version": world["terms"], "accept_terms": True}),
        "auth_login": ("POST", "/api/v1/auth/login", None, {"name": "hostess", "password": "x"}),
        "auth_refresh": ("POST", "/api/v1/auth/refresh", None, {"refresh_token": "x"}),
        "me_edit": ("PATCH", "/api/v1/me", world["viewer"], {"display_name": "V"}),
        "me_exit": ("DELETE", "/api/v1/me", world["viewer"], {"password": "x", "confirm": True}),
        "me_verification_request": ("POST", "/api/v1/me/verification", world["host"],
                                    {"document_reference": "kyc:1"}),
        "accounts_verification_decide": ("PUT", "/api/v1/accounts/hostess/verification",
                                         world["operator"], {"state": "verified"}),
        "accounts_digital_human_approve": ("PUT", "/api/v1/accounts/hostess/digital-human-approval",
                                           world["operator"], {"approved": True}),
        "accounts_forced_exit": ("POST", "/api/v1/accounts/viewer1/forced-exit", world["operator"],
                                 {"reason": "a valid reason"}),
        "rooms_create": ("POST", "/api/v1/rooms", world["host"], room_fields()),
        "rooms_edit": ("PATCH", f"/api/v1/rooms/{room}", world["host"], {"title": "ok"}),
        "rooms_media_token": ("POST", f"/api/v1/rooms/{room}/media-token", world["viewer"], {}),
        "rooms_shutdown": ("POST", f"/api/v1/rooms/{room}/shutdown", world["operator"],
                           {"reason": "a valid reason"}),
        "rooms_rate": ("PUT", f"/api/v1/rooms/{room}/rating", world["viewer"], {"positive": True}),
        "rooms_comment": ("POST", f"/api/v1/rooms/{room}/comments", world["viewer"], {"text": "hi"}),
    }[op]


@pytest.mark.parametrize("op,field", sorted(BAD))
async def test_bad_field_is_named(api, world, room_fields, op, field):
    method, path, token, body = request_for(op, world, room_fields)
    reply = await api.call(method, path, {**body, field: BAD[(op, field)]}, token=token)
    assert reply.status == 400, reply.body
    assert reply.error_field == field or reply.error_field.startswith(f"{field}["), reply.body
    # The server goes on serving.
    assert (await api.call("GET", "/healthz")).status == 200


@pytest.mark.parametrize("op,field,value", SEMANTIC)
async def test_semantic_checks_name_the_field(api, world, room_fields, op, field, value):
    method, path, token, body = request_for(op, world, room_fields)
    reply = await api.call(method, path, {**body, field: value}, token=token)
    assert reply.status == 400 and reply.error_field == field, reply.body


async def test_malformed_bodies_and_unknown_fields(api, world, room_fields):
    reply = await api.call("POST", "/api/v1/rooms", raw=b"{not json", token=world["host"])
    assert reply.status == 400 and reply.body["error"]["code"] == "malformed_json"
    reply = await api.call("POST", "/api/v1/rooms", raw=b"[1, 2]", token=world["host"])
    assert reply.status == 400 and reply.body["error"]["code"] == "json_not_object"
    reply = await api.call("POST", "/api/v1/rooms", {**room_fields(), "price": 3}, token=world["host"])
    assert reply.status == 400 and reply.error_field == "price"
    body = room_fields()
    del body["title"]
    reply = await api.call("POST", "/api/v1/rooms", body, token=world["host"])
    assert reply.status == 400 and reply.error_field == "title"
    reply = await api.call("PATCH", f"/api/v1/rooms/{world['room_id']}", {}, token=world["host"])
    assert reply.status == 400 and reply.error_field == "body"


@pytest.mark.parametrize("query,field", [
    ("q=%21%21%21", "q"), ("q=" + "x" * 300, "q"), ("hashtag=two%20words", "hashtag"),
    ("from=yesterday", "from"), ("to=2030-13-01T00:00:00Z", "to"), ("per_page=0", "per_page"),
    ("per_page=100000", "per_page"), ("page=abc", "page"), ("state=paused", "state"),
    ("from=2030-02-01T00:00:00Z&to=2030-01-01T00:00:00Z", "to"),
])
async def test_bad_search_parameters(api, query, field):
    reply = await api.call("GET", f"/api/v1/rooms/search?{query}")
    assert reply.status == 400 and reply.error_field == field, reply.body


async def test_wrong_login_is_rate_limited(api, world):
    for _ in range(api.app.config.accounts.login_failures_max):
        reply = await api.call("POST", "/api/v1/auth/login", {"name": "hostess", "password": "wrong"})
        assert reply.status == 401
    reply = await api.call("POST", "/api/v1/auth/login", {"name": "hostess", "password": "password-hostess"})
    assert reply.status == 429 and "retry-after" in reply.headers

