"""User tokens: short-lived HS256 JWTs that stand for a user on user-facing endpoints (like an API key, but
they expire on their own and one token can be revoked).

Why HS256 with a key derived from the KEK: only this service issues and verifies them, so a shared secret is
enough (an asymmetric pair buys nothing when no third party verifies), the reference's user JWTs are HS256,
and deriving the key (HKDF of the KEK, `Keyring.derive`) means no new secret to configure, store or lose. The
header's `kid` is the KEK's key id: after `GANTRY_KEK` rotates, tokens signed under a KEK still listed in
`GANTRY_KEK_PREVIOUS` keep verifying until they expire (at most MAX_TTL_SECONDS), then the old KEK can go.

Claims: `sub` (user id), `iat`, `exp`, `jti` (the token id, a uuid; revocation is per jti in PostgreSQL,
table user_tokens), `iss` = ISSUER, `aud` = AUDIENCE. Verification allows HS256 only and checks time against
the injected clock (PyJWT's own clock checks are off). Revocation and unknown users are the caller's (the
interceptor's) check, since they need the database.

    >>> from gantry_server.domain.secrets_at_rest import Keyring
    >>> tokens = UserTokens(Keyring(b"k" * 32))
    >>> token = tokens.issue(user_id="u-1", token_id="t-1", now=1_700_000_000, ttl_seconds=3600)
    >>> tokens.verify(token, now=1_700_000_100)["sub"]
    'u-1'
"""
from __future__ import annotations

import jwt

ISSUER = "gantry"
AUDIENCE = "gantry:user"
ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 3600
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 86400
CLOCK_SKEW_SECONDS = 60  # an `iat` this far ahead of our clock is still accepted (replicas' clocks differ)
_PURPOSE = b"user-token:hs256:v1"
_REQUIRED = ["sub", "iat", "exp", "jti", "iss", "aud"]


class UserTokenError(ValueError):
    """A token that does not authenticate; `reason` is the ErrorInfo reason the caller sees."""

    def __init__(self, message: str, reason: str = "USER_TOKEN_INVALID") -> None:
        super().__init__(message)
        self.reason = reason


class UserTokens:
    """Issues under the active KEK's subkey; verifies under any configured KEK's subkey (by `kid`)."""

    def __init__(self, keyring) -> None:
        self._active_kid = keyring.active_id
        self._keys = {kid: keyring.derive(_PURPOSE, kid) for kid in keyring.key_ids}

    def __repr__(self) -> str:  # never the key bytes
        return f"UserTokens(kids={sorted(self._keys)!r})"

    def issue(self, *, user_id: str, token_id: str, now: int, ttl_seconds: int) -> str:
        claims = {"sub": user_id, "iat": now, "exp": now + ttl_seconds, "jti": token_id, "iss": ISSUER,
                  "aud": AUDIENCE}
        return jwt.encode(claims, self._keys[self._active_kid], algorithm=ALGORITHM,
                          headers={"kid": self._active_kid})

    def verify(self, token: str, *, now: float) -> dict:
        """The claims of a well-signed, unexpired token; raises UserTokenError saying what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UserTokenError("user token is not a JWT (expected 'authorization: Bearer <user token>' or "
                                 "'Bearer cpk_...')") from None
        if header.get("alg") != ALGORITHM:
            raise UserTokenError(f"user token must be {ALGORITHM}, got alg {str(header.get('alg'))[:16]!r}")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UserTokenError(f"user token was signed under key id {str(kid)[:16]!r}, which is not configured "
                                 "(issued by another deployment, or its KEK has been retired)")
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER, audience=AUDIENCE,
                                options={"require": _REQUIRED, "verify_exp": False, "verify_iat": False,
                                         "verify_nbf": False})
        except jwt.InvalidSignatureError:
            raise UserTokenError("user token signature does not verify (tampered or forged)") from None
        except jwt.InvalidIssuerError:
            raise UserTokenError(f"user token has the wrong issuer (expected {ISSUER!r})",
                                 reason="USER_TOKEN_WRONG_ISSUER") from None
        except jwt.InvalidAudienceError:
            raise UserTokenError(f"user token has the wrong audience (expected {AUDIENCE!r})",
                                 reason="USER_TOKEN_WRONG_AUDIENCE") from None
        except jwt.PyJWTError as exc:
            raise UserTokenError(f"user token is malformed: {exc}") from None
        if not isinstance(claims["exp"], (int, float)) or not isinstance(claims["iat"], (int, float)):
            raise UserTokenError("user token is malformed: iat and exp must be numbers")
        if claims["exp"] <= now:
            raise UserTokenError("user token has expired; ask an operator for a new one "
                                 "(gantry admin token create USER_ID)", reason="USER_TOKEN_EXPIRED")
        if claims["iat"] > now + CLOCK_SKEW_SECONDS:
            raise UserTokenError("user token is issued in the future")
        if not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
            raise UserTokenError("user token is malformed: sub and jti must be strings")
        return claims

