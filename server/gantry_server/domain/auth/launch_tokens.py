"""Launch-config tokens: ES256 JWTs that let a miner's instance claim, verify and activate one launch config.

Claims follow the reference: `sub` (the config id), `chute_id`, `iat`, `exp` (iat + 3 h 30 min), `iss`
("chutes"), `url`, `env_key` (32 hex), `egress`, `lock_modules`, `env_type` ("tee" or "graval"), optional
`job_id` and `disk_gb`. Verification allows ES256 only (no HS256 legacy tokens, no "none"), requires `iat`,
`iss`, `exp` and `sub`, and `sub` must equal the config id of the request. The one-time retrieval
(`retrieved_at`) is recorded by the launch-config repository, not here.

    >>> keys = LaunchTokenKeys.generate()
    >>> token = keys.issue(config_id="c1", chute_id="ch", url="https://x/instances/launch_config/c1",
    ...                    env_key="0"*32, egress=False, lock_modules=True, env_type="graval", now=1_700_000_000)
    >>> keys.verify(token, "c1", now=1_700_000_100)["chute_id"]
    'ch'
"""
from __future__ import annotations


import base64

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "chutes"
LIFETIME_SECONDS = 3 * 3600 + 30 * 60
ALGORITHMS = ["ES256"]


class LaunchTokenError(ValueError):
    """The token is missing, malformed, forged, expired or for another config."""


LAUNCH_KEY_NAME = "launch_config_es256"


class LaunchTokenKeys:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None, public_key: ec.EllipticCurvePublicKey) -> None:
        self.private_key = private_key
        self.public_key = public_key

    @classmethod
    def generate(cls) -> "LaunchTokenKeys":
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, key.public_key())

    @classmethod
    def from_pem(cls, pem: bytes) -> "LaunchTokenKeys":
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the launch-config key must be an EC P-256 private key (PEM)")
        return cls(key, key.public_key())

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    @classmethod
    async def shared(cls, engine, keyring) -> "LaunchTokenKeys":
        """The deployment's key: generated once per database by whichever replica starts first, kept only
        encrypted (a token issued by one replica verifies on every other)."""
        from ...store import service_keys  # noqa: PLC0415 - the store imports domain modules, not the reverse

        pem = await service_keys.load_or_create(engine, keyring, LAUNCH_KEY_NAME, lambda: cls.generate().private_pem())
        return cls.from_pem(pem)

    def issue(self, *, config_id: str, chute_id: str, url: str, env_key: str, egress: bool, lock_modules: bool,
              env_type: str, now: int, job_id: str | None = None, disk_gb: int | None = None) -> str:
        if self.private_key is None:
            raise LaunchTokenError("no launch-config private key: this process can verify tokens only")
        claims = {"sub": config_id, "chute_id": chute_id, "iat": now, "exp": now + LIFETIME_SECONDS, "iss": ISSUER,
                  "url": url, "env_key": env_key, "egress": egress, "lock_modules": lock_modules,
                  "env_type": env_type}
        if job_id is not None:
            claims["job_id"] = job_id
        if disk_gb is not None:
            claims["disk_gb"] = disk_gb
        return jwt.encode(claims, self.private_key, algorithm="ES256")

    def fs_key(self, *, chute_id: str, config_id: str, now: int) -> str:
        """`{ts}:{base64url(ECDSA-P256-SHA256 DER signature of "{ts}:{chute_id}:{config_id}")}`, which a chute
        presents to unlock its encrypted files; verifiable with the deployment's launch public key."""
        if self.private_key is None:
            raise LaunchTokenError("no launch-config private key: this process can verify tokens only")
        signature = self.private_key.sign(f"{now}:{chute_id}:{config_id}".encode(), ec.ECDSA(hashes.SHA256()))
        return f"{now}:{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    def verify(self, token: str, config_id: str | None, *, now: float) -> dict:
        """The claims of a valid token for `config_id` (None: for whichever config its `sub` names); raises
        LaunchTokenError saying what is wrong."""
        if not token:
            raise LaunchTokenError("Missing launch config JWT: send 'authorization: Bearer <token>'")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise LaunchTokenError("Missing or invalid launch config JWT: not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise LaunchTokenError(f"launch config JWT must be ES256, got alg {str(header.get('alg'))[:16]!r}")
        try:
            # PyJWT reads time itself; pass our clock by disabling its checks and checking here.
            claims = jwt.decode(token, self.public_key, algorithms=ALGORITHMS, issuer=ISSUER,
                                options={"require": ["iat", "iss", "exp", "sub"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError as exc:
            raise LaunchTokenError(f"Missing or invalid launch config JWT: {exc}") from None
        if not isinstance(claims["exp"], (int, float)) or claims["exp"] <= now:
            raise LaunchTokenError("launch config JWT has expired")
        if not isinstance(claims["iat"], (int, float)) or claims["iat"] > now + 60:
            raise LaunchTokenError("launch config JWT is issued in the future")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise LaunchTokenError("Invalid launch token: missing sub.")
        if config_id is not None and claims["sub"] != config_id:
            raise LaunchTokenError(f"launch config JWT is for another config, not {config_id!r}")
        return claims


def bearer_token(authorization: str | None) -> str:
    """The reference takes the last space-separated word of the header, whatever the scheme word."""
    return (authorization or "").strip().rsplit(" ", 1)[-1] if authorization else ""
