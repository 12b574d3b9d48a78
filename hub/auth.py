"""Connection and subscription tokens: JWT verification and minting for development.

HS256 with `HUB_JWT_SECRET`, or with a PEM public key RS256 (RSA) or ES256 (EC). An expired
token is told apart from a bad one because the SDKs react differently: 109 (token expired)
makes them fetch a new token and retry, while 3500 (invalid token) ends the connection for
good.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hub.config import Settings

ROLES = ("athlete", "trainer", "device", "admin")


class TokenExpired(Exception):
    pass


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection acts for. A device acts for the athlete in `user`."""

    user: str
    role: str
    device: str | None
    expires_at: int
    """Unix seconds; 0 means the token never expires."""


def verify(token: str, settings: Settings) -> Identity:
    if not isinstance(token, str) or not token:
        raise InvalidToken("no token")
    key, algorithms = _key(settings)
    options: jwt.types.Options = {"require": ["sub", "exp"],
                                  "verify_aud": settings.jwt_audience is not None}
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options=options,
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("token expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    return _identity(claims)


def ttl_of(expires_at: int) -> int:
    """Whole seconds left for a reply's `ttl`: rounded down, so the SDK refreshes a little early,
    and at least 1. Expiry timers use the exact time instead: rounding them down too would cut a
    connection or subscription while its token is still valid, and the client, reconnecting with
    that token, would be let in again instead of being told to fetch a new one (109)."""
    return max(int(expires_at - time.time()), 1)


def _key(settings: Settings) -> tuple[str | RSAPublicKey | EllipticCurvePublicKey, list[str]]:
    if settings.jwt_public_key:
        key = _public_key(settings.jwt_public_key)
        return key, ["RS256"] if isinstance(key, RSAPublicKey) else ["ES256"]
    assert settings.jwt_secret is not None
    return settings.jwt_secret, ["HS256"]


@functools.lru_cache(maxsize=4)
def _public_key(pem: str) -> RSAPublicKey | EllipticCurvePublicKey:
    """The PEM parsed once: given the text, PyJWT parses it on every verify, about 70 of the
    150 us an RS256 connect spends on its token here. Not a key PyJWT could use: InvalidToken,
    as PyJWT itself would answer."""
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise InvalidToken(f"HUB_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise InvalidToken("HUB_JWT_PUBLIC_KEY must be an RSA or EC public key")
    return key


def _identity(claims: dict[str, object]) -> Identity:
    sub, role, device = claims.get("sub"), claims.get("role", "athlete"), claims.get("device")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("sub must be a non-empty string")
    if role not in ROLES:
        raise InvalidToken(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role == "device" and (not isinstance(device, str) or not device):
        raise InvalidToken("a device token needs a `device` claim")
    exp = claims.get("exp")
    return Identity(
        user=sub,
        role=str(role),
        device=device if isinstance(device, str) else None,
        expires_at=int(exp) if isinstance(exp, (int, float)) else 0,
    )


def mint(
    secret: str,
    sub: str,
    role: str = "athlete",
    *,
    device: str | None = None,
    ttl: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """An HS256 token for development and tests."""
    claims: dict[str, object] = {"sub": sub, "role": role, "exp": int(time.time()) + ttl}
    if device:
        claims["device"] = device
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class SubscriptionGrant:
    user: str
    channel: str
    expires_at: int


def verify_subscription(token: str, settings: Settings) -> SubscriptionGrant:
    """A subscription token: claims `sub`, `channel`, `exp`, signed like connection tokens."""
    key, algorithms = _key(settings)
    try:
        claims = jwt.decode(
            token, key, algorithms=algorithms, issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options={"require": ["sub", "exp", "channel"],
                     "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("subscription token expired") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    return SubscriptionGrant(str(claims["sub"]), str(claims["channel"]), int(claims["exp"]))
