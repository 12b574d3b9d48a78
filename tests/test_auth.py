import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub import auth
from hub.config import Settings

SECRET = "s" * 32


def settings(**kw: object) -> Settings:
    return Settings(jwt_secret=SECRET, **kw)  # type: ignore[arg-type]


def test_hs256_token_gives_identity_with_default_role() -> None:
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, SECRET)
    identity = auth.verify(token, settings())
    assert (identity.user, identity.role, identity.device) == ("u1", "athlete", None)


@pytest.mark.parametrize("claims", [
    {"sub": "u1", "role": "coach"},
    {"sub": "", "role": "athlete"},
    {"sub": "u1", "role": "device"},
])
def test_bad_claims_are_invalid(claims: dict[str, object]) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET)
    with pytest.raises(auth.InvalidToken):
        auth.verify(token, settings())


def test_missing_exp_and_wrong_signature_are_invalid() -> None:
    with pytest.raises(auth.InvalidToken):
        auth.verify(jwt.encode({"sub": "u1"}, SECRET), settings())
    with pytest.raises(auth.InvalidToken):
        auth.verify(auth.mint("t" * 32, "u1"), settings())


def test_expired_token_is_told_apart_from_invalid() -> None:
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) - 5}, SECRET)
    with pytest.raises(auth.TokenExpired):
        auth.verify(token, settings())


def test_issuer_and_audience_are_checked_when_configured() -> None:
    checked = settings(jwt_issuer="fitsync", jwt_audience="hub")
    good = auth.mint(SECRET, "u1", issuer="fitsync", audience="hub")
    assert auth.verify(good, checked).user == "u1"
    with pytest.raises(auth.InvalidToken):
        auth.verify(auth.mint(SECRET, "u1", issuer="other", audience="hub"), checked)
    with pytest.raises(auth.InvalidToken):
        auth.verify(auth.mint(SECRET, "u1", issuer="fitsync", audience="else"), checked)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_tokens_verify(algorithm: str) -> None:
    private = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
               if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1()))
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    token = jwt.encode({"sub": "d-owner", "role": "device", "device": "watch-1",
                        "exp": int(time.time()) + 60}, private, algorithm=algorithm)
    identity = auth.verify(token, Settings(jwt_public_key=pem))
    assert (identity.user, identity.role, identity.device) == ("d-owner", "device", "watch-1")


def test_the_public_key_is_parsed_once_and_a_wrong_one_refuses_tokens() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, rsa_key, algorithm="RS256")
    parsed = auth._public_key.cache_info().misses
    for _ in range(3):
        assert auth.verify(token, Settings(jwt_public_key=rsa_pem)).user == "u1"
    assert auth._public_key.cache_info().misses == parsed + 1
    with pytest.raises(auth.InvalidToken):
        auth.verify(token, Settings(jwt_public_key=ec_pem))  # signed by another key's kind
    with pytest.raises(auth.InvalidToken, match="not a PEM public key"):
        auth.verify(token, Settings(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n"))


def test_token_command_mints_a_token_the_hub_accepts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hub", "token", "--sub", "a1", "--role", "device",
         "--device", "band-7", "--ttl", "120"],
        env={"HUB_JWT_SECRET": SECRET, "PATH": ""}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    identity = auth.verify(out, settings())
    assert (identity.user, identity.role, identity.device) == ("a1", "device", "band-7")
    assert 100 < identity.expires_at - time.time() <= 120


def test_token_command_refuses_without_a_secret() -> None:
    result = subprocess.run([sys.executable, "-m", "hub", "token", "--sub", "a1"],
                            env={"PATH": ""}, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "HUB_JWT_SECRET" in result.stderr
