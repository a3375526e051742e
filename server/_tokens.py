"""Access tokens: compact JWTs signed with HMAC-SHA256 (HS256).

A token names a key id (``kid`` in the header), a subject, a role, a room and
an expiry. Platforms mint them with the API key and secret (any JWT library
does, as with LiveKit's access tokens); the server mints them for its own
users. The format is deliberately strict: one algorithm, one header shape,
integer times, known roles. Anything else is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ANY_ROOM",
    "ROLES",
    "ApiKey",
    "Claims",
    "TokenAuthority",
    "TokenError",
    "load_or_create_api_key",
]

ROLES = ("viewer", "host", "operator", "service")
# Rooms and roles that act everywhere; only these two roles may hold it.
ANY_ROOM = "*"
_WIDE_ROLES = ("operator", "service")
_HEADER_KEYS = {"alg", "typ", "kid"}
_CLAIM_KEYS = {"sub", "role", "room", "exp", "iat"}


class TokenError(Exception):
    """A token is malformed, tampered with, expired, or signed by an unknown key.

    ``reason`` is a short machine-readable code (``malformed``, ``bad_signature``,
    ``unknown_key``, ``expired``, ``not_yet_valid``) and the message says more.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Claims:
    """What a verified token grants."""

    key_id: str
    """The API key that signed it."""
    subject: str
    """Who holds it: an account id, a platform's user id, or a service name."""
    role: str
    """One of ROLES."""
    room: str
    """The room it is for, or ANY_ROOM for operators and services."""
    issued_at: int
    """Unix time, seconds."""
    expires_at: int
    """Unix time, seconds."""

    def allows_room(self, room: str) -> bool:
        """Whether this token is for ``room``."""
        return self.room == ANY_ROOM or self.room == room


@dataclass(frozen=True)
class ApiKey:
    """An API key id and its signing secret."""

    key_id: str
    secret: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode_untrusted(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise TokenError("malformed", "token segment is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "token segment is not base64url") from None


def _json_object_untrusted(data: bytes, what: str, keys: set[str]) -> dict:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenError("malformed", f"token {what} is not JSON") from None
    if not isinstance(value, dict) or set(value) != keys:
        raise TokenError("malformed", f"token {what} must have exactly the fields {sorted(keys)}")
    return value


class TokenAuthority:
    """Mints and verifies tokens with a set of API keys.

    ``leeway_s`` tolerates clock skew on expiry. Times are passed in as Unix
    seconds so that tests control them.
    """

    def __init__(self, keys: list[ApiKey], *, leeway_s: int = 30, max_ttl_s: int = 2592000,
                 max_token_bytes: int = 4096) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        self._secrets = {k.key_id: k.secret.encode("utf-8") for k in keys}
        self._default_kid = keys[0].key_id
        self._leeway_s = leeway_s
        self._max_ttl_s = max_ttl_s
        # Longer tokens are refused before any decoding work.
        self._max_token_bytes = max_token_bytes

    def mint(self, *, subject: str, role: str, room: str, ttl_s: int, now: float,
             key_id: str | None = None) -> str:
        """A signed token; raises ValueError for a role, room or TTL not allowed."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not room:
            raise ValueError("room must not be empty")
        if room == ANY_ROOM and role not in _WIDE_ROLES:
            raise ValueError(f"only {' and '.join(_WIDE_ROLES)} tokens may be for every room ('*')")
        if not 1 <= ttl_s <= self._max_ttl_s:
            raise ValueError(f"ttl must be from 1 to {self._max_ttl_s} s, got {ttl_s}")
        kid = key_id or self._default_kid
        secret = self._secrets[kid]
        header = {"alg": "HS256", "typ": "JWT", "kid": kid}
        issued = int(now)
        claims = {"sub": subject, "role": role, "room": room, "iat": issued, "exp": issued + ttl_s}
        signing_input = (_b64encode(json.dumps(header, separators=(",", ":")).encode())
                         + "." + _b64encode(json.dumps(claims, separators=(",", ":")).encode()))
        signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return signing_input + "." + _b64encode(signature)

    def verify_untrusted(self, token: str, *, now: float) -> Claims:
        """Check a token from the network and return its claims, or raise TokenError."""
        if not isinstance(token, str) or len(token) > self._max_token_bytes or not token.isascii():
            raise TokenError("malformed", "token is not a compact JWT")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed", "token must have three dot-separated parts")
        header = _json_object_untrusted(_b64decode_untrusted(parts[0]), "header", _HEADER_KEYS)
        if header["alg"] != "HS256" or header["typ"] != "JWT":
            raise TokenError("malformed", "token must be a JWT signed with HS256")
        secret = self._secrets.get(header["kid"]) if isinstance(header["kid"], str) else None
        if secret is None:
            raise TokenError("unknown_key", "token is signed by an unknown key")
        signature = _b64decode_untrusted(parts[2])
        expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        # Re-encoding catches non-canonical base64 (spare low bits) that would
        # otherwise let two spellings of one signature both pass.
        if not hmac.compare_digest(signature, expected) or _b64encode(signature) != parts[2]:
            raise TokenError("bad_signature", "token signature does not match")
        claims = _json_object_untrusted(_b64decode_untrusted(parts[1]), "claims", _CLAIM_KEYS)
        sub, role, room, iat, exp = (claims[k] for k in ("sub", "role", "room", "iat", "exp"))
        if not (isinstance(sub, str) and isinstance(room, str) and room and role in ROLES
                and type(iat) is int and type(exp) is int):
            raise TokenError("malformed", "token claims have the wrong types or an unknown role")
        if room == ANY_ROOM and role not in _WIDE_ROLES:
            raise TokenError("malformed", "only operator and service tokens may be for every room")
        if now > exp + self._leeway_s:
            raise TokenError("expired", "token has expired")
        if iat > now + self._leeway_s:
            raise TokenError("not_yet_valid", "token is issued in the future")
        return Claims(key_id=header["kid"], subject=sub, role=role, room=room,
                      issued_at=iat, expires_at=exp)


def load_or_create_api_key(data_dir: Path, key_id: str = "", secret: str = "") -> tuple[ApiKey, bool]:
    """The API key from config, else from ``data_dir/api-key.json``, else a new one.

    Returns the key and whether it was just created (the caller prints it
    once). The file is readable by its owner only.
    """
    if key_id and secret:
        return ApiKey(key_id, secret), False
    if key_id or secret:
        raise ValueError("tokens.api_key and tokens.api_secret are set together or not at all")
    path = data_dir / "api-key.json"
    if path.exists():
        stored = json.loads(path.read_text("utf-8"))
        return ApiKey(stored["api_key"], stored["api_secret"]), False
    key = ApiKey("SC" + secrets.token_hex(6).upper(), secrets.token_urlsafe(32))
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"api_key": key.key_id, "api_secret": key.secret}, f)
    os.replace(tmp, path)
    return key, True
