"""User tokens without a server: what verifies, and the reason each bad token is refused with."""
from __future__ import annotations

import base64
import json

import jwt
import pytest

from gantry_server.domain.auth.user_tokens import AUDIENCE, ISSUER, UserTokenError, UserTokens
from gantry_server.domain.secrets_at_rest import Keyring

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32
NOW = 1_767_225_600


def issue(ring: Keyring, *, ttl: int = 3600, now: int = NOW) -> str:
    return UserTokens(ring).issue(user_id="u-1", token_id="t-1", now=now, ttl_seconds=ttl)


def refused(ring: Keyring, token: str, now: float = NOW + 10) -> UserTokenError:
    with pytest.raises(UserTokenError) as info:
        UserTokens(ring).verify(token, now=now)
    return info.value


def test_a_token_carries_the_user_its_id_issuer_audience_and_lifetime():
    ring = Keyring(NEW)
    claims = UserTokens(ring).verify(issue(ring, ttl=600), now=NOW + 599)
    assert claims == {"sub": "u-1", "jti": "t-1", "iat": NOW, "exp": NOW + 600, "iss": ISSUER, "aud": AUDIENCE}
    assert jwt.get_unverified_header(issue(ring)) == {"alg": "HS256", "typ": "JWT", "kid": ring.active_id}


def test_expiry_follows_the_clock_given_not_the_wall_clock():
    ring = Keyring(NEW)
    err = refused(ring, issue(ring, ttl=600), now=NOW + 600)
    assert err.reason == "USER_TOKEN_EXPIRED" and "expired" in str(err)
    assert refused(ring, issue(ring), now=NOW - 61).reason == "USER_TOKEN_INVALID"  # issued in the future


def test_tampered_claims_and_foreign_keys_do_not_verify():
    ring = Keyring(NEW)
    head, body, sig = issue(ring).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "u-2"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    err = refused(ring, f"{head}.{forged_body}.{sig}")
    assert err.reason == "USER_TOKEN_INVALID" and "signature" in str(err)
    err = refused(ring, issue(Keyring(OTHER)))
    assert err.reason == "USER_TOKEN_INVALID" and "not configured" in str(err)


def test_wrong_issuer_audience_algorithm_and_garbage_are_named():
    ring = Keyring(NEW)
    key = ring.derive(b"user-token:hs256:v1")
    base = {"sub": "u-1", "jti": "t-1", "iat": NOW, "exp": NOW + 60, "iss": ISSUER, "aud": AUDIENCE}
    header = {"kid": ring.active_id}
    assert refused(ring, jwt.encode({**base, "iss": "chutes"}, key, "HS256", header)).reason == \
        "USER_TOKEN_WRONG_ISSUER"
    assert refused(ring, jwt.encode({**base, "aud": "other"}, key, "HS256", header)).reason == \
        "USER_TOKEN_WRONG_AUDIENCE"
    no_jti = {k: v for k, v in base.items() if k != "jti"}
    assert "jti" in str(refused(ring, jwt.encode(no_jti, key, "HS256", header)))
    assert "HS256" in str(refused(ring, jwt.encode(base, key, "HS512", header)))
    unsigned = jwt.encode(base, None, "none", header)
    assert refused(ring, unsigned).reason == "USER_TOKEN_INVALID"
    assert "not a JWT" in str(refused(ring, "not-a-token"))


def test_tokens_survive_a_kek_rotation_while_the_old_key_is_previous():
    token = issue(Keyring(OLD))
    assert UserTokens(Keyring(NEW, [OLD])).verify(token, now=NOW + 10)["sub"] == "u-1"
    assert refused(Keyring(NEW), token).reason == "USER_TOKEN_INVALID"


def test_signing_keys_are_subkeys_never_the_kek_and_never_shown():
    ring = Keyring(NEW)
    assert ring.derive(b"user-token:hs256:v1") != NEW
    assert ring.derive(b"a") != ring.derive(b"b")
    assert NEW.decode() not in repr(UserTokens(ring)) and NEW.decode() not in repr(ring)
