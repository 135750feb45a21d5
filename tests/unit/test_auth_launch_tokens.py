"""Launch-config JWTs: ES256 only, reference claims, bound to one config, checked against the injected time."""
from __future__ import annotations

import base64
import json

import jwt
import pytest

from gantry_server.domain.auth.launch_tokens import LIFETIME_SECONDS, LaunchTokenError, LaunchTokenKeys, bearer_token

NOW = 1_767_225_600
KEYS = LaunchTokenKeys.generate()


def _issue(keys=KEYS, **kw) -> str:
    args = dict(config_id="cfg-1", chute_id="chute-1", url="https://api.example/instances/launch_config/cfg-1",
                env_key="ab" * 16, egress=False, lock_modules=True, env_type="tee", now=NOW, job_id="job-9")
    return keys.issue(**{**args, **kw})


def test_issued_token_carries_the_reference_claims():
    claims = KEYS.verify(_issue(), "cfg-1", now=NOW + 10)
    assert claims["sub"] == "cfg-1" and claims["iss"] == "chutes" and claims["exp"] == NOW + 3 * 3600 + 1800
    assert {"chute_id", "url", "env_key", "egress", "lock_modules", "env_type", "job_id"} <= claims.keys()
    assert jwt.get_unverified_header(_issue())["alg"] == "ES256"


def test_token_for_another_config_is_refused():
    with pytest.raises(LaunchTokenError, match="another config"):
        KEYS.verify(_issue(), "cfg-2", now=NOW)


def test_expired_token_is_refused():
    with pytest.raises(LaunchTokenError, match="expired"):
        KEYS.verify(_issue(), "cfg-1", now=NOW + LIFETIME_SECONDS)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_tampered_claims_fail_the_signature():
    header, payload, sig = _issue().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "cfg-2"
    with pytest.raises(LaunchTokenError, match="Signature verification failed"):
        KEYS.verify(".".join([header, _b64(claims), sig]), "cfg-2", now=NOW)


def test_token_of_another_key_is_refused():
    with pytest.raises(LaunchTokenError, match="invalid"):
        KEYS.verify(_issue(LaunchTokenKeys.generate()), "cfg-1", now=NOW)


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_other_algorithms_are_refused(alg):
    claims = {"sub": "cfg-1", "iat": NOW, "exp": NOW + 60, "iss": "chutes"}
    token = _b64({"alg": alg, "typ": "JWT"}) + "." + _b64(claims) + "." + ("" if alg == "none" else "c2ln")
    with pytest.raises(LaunchTokenError, match="must be ES256"):
        KEYS.verify(token, "cfg-1", now=NOW)


def test_wrong_issuer_and_garbage_are_refused():
    key = KEYS.private_key
    token = jwt.encode({"sub": "cfg-1", "iat": NOW, "exp": NOW + 60, "iss": "squad"}, key, algorithm="ES256")
    with pytest.raises(LaunchTokenError, match="issuer"):
        KEYS.verify(token, "cfg-1", now=NOW)
    for junk in ("", "not.a.jwt", "abc"):
        with pytest.raises(LaunchTokenError):
            KEYS.verify(junk, "cfg-1", now=NOW)


def test_bearer_takes_the_last_word_like_the_reference():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("abc") == "abc" and bearer_token(None) == ""
