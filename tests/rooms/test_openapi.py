"""The API is what its OpenAPI document says: every router route is
documented, every documented route exists, and every role gets from every
route what the document promises (the authorisation matrix, generated from
the route table)."""

import re
import time

import jsonschema

ROLES = ("anonymous", "viewer", "host", "operator", "service")


def resolve(node, doc):
    """``node`` with every local $ref replaced by what it points to."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, doc)
        return {k: resolve(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, doc) for v in node]
    return node


def refused_for_role(reply):
    """Whether the answer is the API's refusal of the token itself (none, bad,
    or of a role the route does not accept), not a semantic 401/403."""
    if reply.status not in (401, 403) or not isinstance(reply.body, dict):
        return False
    code = reply.body["error"]["code"]
    return code in ("missing_token", "forbidden") or code.startswith("token_")


def documented(doc):
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


async def test_every_route_is_documented_and_every_documented_route_exists(api):
    doc = (await api.call("GET", "/api/v1/openapi.json")).body
    assert doc["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator.check_schema(resolve(doc["components"]["schemas"], doc)["Room"])
    routes = {(m, re.sub(r"\{(\w+):path\}", r"{\1}", p)) for m, p, _ in api.app.router.route_table()}
    in_doc = {(m, p) for m, p, _ in documented(doc)}
    assert routes - in_doc == set(), "routes missing from /api/v1/openapi.json"
    assert in_doc - routes == set(), "documented routes that do not exist"
    names = {name for _, _, name in api.app.router.route_table()}
    assert {op["operationId"] for _, _, op in documented(doc)} == names


class World:
    """A fresh host with a room, an audience member and an operator, and a
    token of every role."""

    counter = 0

    @classmethod
    async def make(cls, api, room_fields):
        world = cls()
        cls.counter += 1
        n = cls.counter
        world.host_name, world.viewer_name = f"host{n}", f"viewer{n}"
        host = await api.register(world.host_name, "host")
        viewer = await api.register(world.viewer_name, "audience")
        world.other_name = f"other{n}"
        await api.register(world.other_name, "audience")
        world.host_session = await api.login(world.host_name)
        operator_token = await api.operator(f"op{n}")
        room = await api.call("POST", "/api/v1/rooms", room_fields(),
                              token=world.host_session["access_token"])
        world.room_id = room.body["room"]["id"]
        mint = api.app.tokens.mint
        now = time.time()
        world.tokens = {
            "anonymous": None,
            "viewer": mint(subject=viewer["id"], role="viewer", room=world.room_id, ttl_s=600, now=now),
            "host": mint(subject=host["id"], role="host", room=world.room_id, ttl_s=600, now=now),
            "operator": operator_token,
            "service": api.service_token(),
        }
        world.passwords = {"viewer": "password-" + world.viewer_name,
                           "host": "password-" + world.host_name, "operator": f"password-op{n}"}
        return world

    def path(self, pattern, method):
        # Follow, unfollow and forced exit act on a third account; decisions
        # about hosts act on the host.
        name = self.other_name if ("follow" in pattern or "forced-exit" in pattern) else self.host_name
        return pattern.replace("{room_id}", self.room_id).replace("{name}", name)

    def body(self, operation, role, room_fields, iso_time):
        op = operation["operationId"]
        if "requestBody" not in operation:
            return None
        if op == "rooms_create":
            return room_fields()
        if op == "rooms_edit":
            return {"title": "Edited", "scheduled_start": iso_time(time.time() + 7200)}
        if op == "accounts_register":
            World.counter += 1
            return {**operation["requestBody"]["content"]["application/json"]["example"],
                    "name": f"new{World.counter}"}
        if op == "auth_login":
            return {"name": self.host_name, "password": "password-" + self.host_name}
        if op == "auth_refresh":
            return {"refresh_token": self.host_session["refresh_token"]}
        if op == "me_exit":
            return {"password": self.passwords.get(role, "x"), "confirm": True}
        return operation["requestBody"]["content"]["application/json"]["example"]


async def test_every_role_against_every_route(api, room_fields, iso_time):
    doc = (await api.call("GET", "/api/v1/openapi.json")).body
    checked = 0
    for method, path, operation in documented(doc):
        allowed = operation["x-shopcast-roles"]
        world = await World.make(api, room_fields)
        for role in ROLES:
            reply = await api.call(method, world.path(path, method),
                                   world.body(operation, role, room_fields, iso_time),
                                   token=world.tokens[role])
            where = f"{method} {path} as {role}: {reply.status} {reply.body!r:.300}"
            if role not in allowed:
                assert reply.status == (401 if role == "anonymous" else 403), where
                assert refused_for_role(reply), where
                continue
            assert not refused_for_role(reply), where
            assert str(reply.status) in operation["responses"], where
            content = operation["responses"][str(reply.status)].get("content", {})
            for content_type, media in content.items():
                assert reply.headers["content-type"].startswith(content_type), where
                if content_type == "application/json":
                    jsonschema.validate(reply.body, resolve(media["schema"], doc),
                                        cls=jsonschema.Draft202012Validator)
            checked += 1
    assert checked > 50
