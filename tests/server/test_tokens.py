"""Access tokens: minting, verification, and that any change is rejected."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopcast.server._tokens import (
    ApiKey,
    TokenAuthority,
    TokenError,
    load_or_create_api_key,
)

NOW = 1_800_000_000
AUTHORITY = TokenAuthority([ApiKey("k1", "secret-one"), ApiKey("k2", "secret-two")], leeway_s=30)
TOKEN = AUTHORITY.mint(subject="alice", role="host", room="room-1", ttl_s=600, now=NOW)


def test_round_trip():
    claims = AUTHORITY.verify_untrusted(TOKEN, now=NOW + 10)
    assert (claims.key_id, claims.subject, claims.role, claims.room) == ("k1", "alice", "host", "room-1")
    assert claims.expires_at == NOW + 600
    assert claims.allows_room("room-1") and not claims.allows_room("room-2")


def test_standard_jwt_shape():
    header, claims, _ = TOKEN.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    assert json.loads(base64.urlsafe_b64decode(pad(claims)))["role"] == "host"


def test_expired_and_future_tokens():
    with pytest.raises(TokenError) as info:
        AUTHORITY.verify_untrusted(TOKEN, now=NOW + 600 + 31)
    assert info.value.reason == "expired"
    AUTHORITY.verify_untrusted(TOKEN, now=NOW + 600 + 29)  # within the leeway
    with pytest.raises(TokenError) as info:
        AUTHORITY.verify_untrusted(TOKEN, now=NOW - 60)
    assert info.value.reason == "not_yet_valid"


def test_unknown_key_and_other_secret():
    other = TokenAuthority([ApiKey("k3", "x")]).mint(subject="a", role="viewer", room="r", ttl_s=60, now=NOW)
    with pytest.raises(TokenError) as info:
        AUTHORITY.verify_untrusted(other, now=NOW)
    assert info.value.reason == "unknown_key"
    forged = TokenAuthority([ApiKey("k1", "guessed")]).mint(subject="a", role="operator", room="*",
                                                             ttl_s=60, now=NOW)
    with pytest.raises(TokenError) as info:
        AUTHORITY.verify_untrusted(forged, now=NOW)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("role, room", [("viewer", "*"), ("host", "*"), ("admin", "r"), ("viewer", "")])
def test_mint_refuses_what_is_not_allowed(role, room):
    with pytest.raises(ValueError):
        AUTHORITY.mint(subject="a", role=role, room=room, ttl_s=60, now=NOW)


def test_mint_refuses_ttl_beyond_max():
    with pytest.raises(ValueError):
        TokenAuthority([ApiKey("k", "s")], max_ttl_s=100).mint(subject="a", role="viewer", room="r",
                                                               ttl_s=101, now=NOW)


@settings(max_examples=300)
@given(position=st.integers(min_value=0, max_value=len(TOKEN) - 1),
       replacement=st.characters(codec="ascii"))
def test_any_single_character_change_is_rejected(position, replacement):
    if TOKEN[position] == replacement:
        return
    tampered = TOKEN[:position] + replacement + TOKEN[position + 1:]
    with pytest.raises(TokenError):
        AUTHORITY.verify_untrusted(tampered, now=NOW)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_arbitrary_text_is_rejected_cleanly(text):
    with pytest.raises(TokenError):
        AUTHORITY.verify_untrusted(text, now=NOW)


@settings(max_examples=200)
@given(cut=st.integers(min_value=0, max_value=len(TOKEN) - 1), extra=st.text(max_size=5))
def test_truncated_or_extended_tokens_are_rejected(cut, extra):
    candidate = TOKEN[:cut] + extra
    if candidate == TOKEN:
        return
    with pytest.raises(TokenError):
        AUTHORITY.verify_untrusted(candidate, now=NOW)


def test_api_key_is_generated_once_and_private(tmp_path):
    key, created = load_or_create_api_key(tmp_path)
    assert created
    again, created_again = load_or_create_api_key(tmp_path)
    assert again == key and not created_again
    assert (tmp_path / "api-key.json").stat().st_mode & 0o077 == 0
    configured, created = load_or_create_api_key(tmp_path, "mine", "s3cret")
    assert configured == ApiKey("mine", "s3cret") and not created
