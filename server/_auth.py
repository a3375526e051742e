"""Authorising HTTP requests by their bearer token: one place for the
401/403 answers every API route gives."""

from __future__ import annotations

import time

from shopcast.server._routing import HTTPError, Request
from shopcast.server._tokens import Claims, TokenAuthority, TokenError

__all__ = ["bearer_claims_untrusted"]


def bearer_claims_untrusted(request: Request, tokens: TokenAuthority, *, roles: tuple[str, ...],
                            room: str | None = None, allow_anonymous: bool = False) -> Claims | None:
    """The verified claims of the request's ``Authorization: Bearer`` token.

    Returns None for a request without the header when ``allow_anonymous``;
    otherwise raises HTTPError 401 (missing, malformed, expired, tampered or
    unknown-key token) or 403 (a role not in ``roles``, or a token for
    another room than ``room``), naming the ``authorization`` field.
    """
    header = request.header("authorization")
    if header is None and allow_anonymous:
        return None
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPError(401, "missing_token", "an Authorization: Bearer token is required",
                        "authorization")
    try:
        claims = tokens.verify_untrusted(token.strip(), now=time.time())
    except TokenError as exc:
        raise HTTPError(401, f"token_{exc.reason}", str(exc), "authorization") from None
    if claims.role not in roles:
        raise HTTPError(403, "forbidden", f"role {claims.role} may not do this; allowed: "
                        + ", ".join(roles), "authorization")
    if room is not None and not claims.allows_room(room):
        raise HTTPError(403, "forbidden", f"token is not for room {room}", "authorization")
    return claims
