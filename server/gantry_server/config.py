"""Typed settings read once from the environment (GANTRY_*).

Every knob is listed in the README's configuration table; tests build `Settings` directly.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs


class ConfigError(ValueError):
    """A setting is missing or malformed; the CLI prints it as one line and exits 2."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _addr(name: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, got {raw!r}")
    return raw


def _networks(name: str, raw: str) -> tuple[str, ...]:
    import ipaddress

    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ConfigError(f"{name} must be a comma list of IP addresses or networks, got {part!r}") from None
        out.append(part)
    return tuple(out)


@dataclass(frozen=True)
class BrokerSettings:
    """The broker face (seed 004): which providers, their credentials, and the lifecycle's clocks."""

    providers: tuple[str, ...] = ("simulated",)  # any of vastai, tensordock, simulated
    deployment_id: str | None = None  # labels our instances; generated and kept in the data dir when unset
    vastai_api_key: str | None = field(default=None, repr=False)
    vastai_base_url: str = "https://console.vast.ai/api/v0"
    tensordock_api_token: str | None = field(default=None, repr=False)
    tensordock_auth_id: str | None = field(default=None, repr=False)
    tensordock_base_url: str = "https://dashboard.tensordock.com/api/v2"
    # Token-bucket limits of the provider accounts (None: the provider's documented limit, Vast 1/s burst 2,
    # TensorDock 2/s burst 3); raise them only for an account with a higher limit, or a local fake provider.
    vastai_rate_per_second: float | None = None
    vastai_burst: int | None = None
    tensordock_rate_per_second: float | None = None
    tensordock_burst: int | None = None
    simulated_offer_count: int = 24
    simulated_boot_seconds: float = 1.0  # a simulated instance accepts SSH this long after create
    ssh_verify_timeout_minutes: int = 10  # default provisioning deadline (per session: 1..30)
    hard_max_hours: int = 12
    lifecycle_interval_seconds: float = 15.0
    reconcile_interval_seconds: float = 120.0
    # A live session younger than this is not checked for a missing instance (listings lag a fresh create);
    # past it, one listing without the instance and a direct check saying GONE end it (billed to when last seen).
    ghost_grace_minutes: int = 2
    reconcile_misses: int = 3  # consecutive listings without the instance (or session) before acting
    idle_probe_interval_seconds: float = 60.0
    preserve_hours: int = 72  # storage_policy "preserve": how long a stopped instance's disk is kept
    shutdown_policy: str = "keep"  # SIGTERM: "keep" instances running (sessions resume) or "destroy" them
    inventory_ttl_seconds: float = 60.0
    # Drive each new session's verification from the creating process right away (real time), besides the
    # lifecycle loop; tests that move a ManualClock turn it off and call the loop's tick themselves.
    fast_verify: bool = True
    background_loops: bool = True  # tests that drive ticks by hand turn the periodic loops off
    # GANTRY_BROKER_AUTH: "required" (API key or user token; a consumer sees only its own sessions and costs)
    # or "open" (no credentials, consumer_id as sent: the seed's behaviour). None: required when a real
    # provider is configured (from_env also when a listener is not on loopback). See docs/broker.md.
    auth: str | None = None
    inventory_auth: str = "open"  # GANTRY_BROKER_INVENTORY_AUTH: the same switch for inventory and templates

    @property
    def auth_required(self) -> bool:
        if self.auth is not None:
            return self.auth == "required"
        return any(p != "simulated" for p in self.providers)


@dataclass(frozen=True)
class Settings:
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    http_max_body_bytes: int = 1 << 20  # REST gateway: larger bodies get 413
    # REST listener (gantry_gateway/server.py HttpLimits): a request's head, then its body, must arrive within
    # the header timeout; idle keep-alive connections close after the idle timeout; connections beyond the cap
    # get 503 and are closed.
    http_header_timeout_seconds: float = 10.0
    http_idle_timeout_seconds: float = 60.0
    http_max_connections: int = 4096
    # Browser origins (scheme://host[:port]) whose state-changing REST requests are accepted; none by default
    # (gantry_gateway/browser.py): GANTRY_HTTP_ALLOWED_ORIGINS, comma-separated.
    http_allowed_origins: tuple[str, ...] = ()
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("gantry")))
    migrate_on_start: bool = True
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    use_uvloop: bool = True
    # `gantry serve` processes sharing the listeners (GANTRY_WORKERS / --workers); None: one per core, or one
    # with the simulated provider, whose machines live in its process (gantry_server/workers.py).
    workers: int | None = None
    admin_token: str | None = None
    db_pool_size: int = 10
    netuid: int = 64
    kek: str | None = field(default=None, repr=False)  # base64 of 32 bytes; never logged
    kek_previous: tuple[str, ...] = field(default=(), repr=False)
    trusted_proxies: tuple[str, ...] = ()
    # TLS on both listeners (gRPC and REST) when a certificate chain and its key are given; with a client CA,
    # both require and verify client certificates (mTLS, e.g. TEE VMs: gantry_server/tls.py).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    allow_plaintext: bool = False  # a non-loopback listener without TLS: only behind a TLS-terminating proxy
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    attestation: AttestationSettings = field(default_factory=lambda: AttestationSettings())
    launch: "LaunchSettings" = field(default_factory=lambda: LaunchSettings())
    miner: "MinerSettings" = field(default_factory=lambda: MinerSettings())
    limits: "RateLimitSettings" = field(default_factory=lambda: RateLimitSettings())

    @property
    def embedded(self) -> bool:
        """True when Gantry must start its own PostgreSQL or Redis."""
        return self.database_url is None or self.redis_url is None

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        get = lambda key: (env.get(key) or "").strip() or None  # noqa: E731
        kw: dict = {}
        if v := get("GANTRY_GRPC_ADDR"):
            kw["grpc_addr"] = _addr("GANTRY_GRPC_ADDR", v)
        if v := get("GANTRY_HTTP_ADDR"):
            kw["http_addr"] = _addr("GANTRY_HTTP_ADDR", v)
        if v := get("GANTRY_HTTP_MAX_BODY_BYTES"):
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"GANTRY_HTTP_MAX_BODY_BYTES must be a positive integer, got {v!r}")
            kw["http_max_body_bytes"] = int(v)
        for name, key in (("GANTRY_HTTP_HEADER_TIMEOUT_SECONDS", "http_header_timeout_seconds"),
                          ("GANTRY_HTTP_IDLE_TIMEOUT_SECONDS", "http_idle_timeout_seconds")):
            if v := get(name):
                try:
                    seconds = float(v)
                except ValueError:
                    seconds = 0.0
                if not 0 < seconds < 86400:
                    raise ConfigError(f"{name} must be a number of seconds above 0 (and below a day), got {v!r}")
                kw[key] = seconds
        if v := get("GANTRY_HTTP_MAX_CONNECTIONS"):
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"GANTRY_HTTP_MAX_CONNECTIONS must be a positive integer, got {v!r}")
            kw["http_max_connections"] = int(v)
        if v := get("GANTRY_HTTP_ALLOWED_ORIGINS"):
            origins = tuple(o.strip().rstrip("/") for o in v.split(",") if o.strip())
            bad = [o for o in origins if not re.match(r"^https?://[^/\s]+$", o)]
            if bad:
                raise ConfigError(f"GANTRY_HTTP_ALLOWED_ORIGINS must list origins like https://console.example "
                                  f"(scheme://host[:port], no path), got {bad[0]!r}")
            kw["http_allowed_origins"] = origins
        if v := get("GANTRY_DATABASE_URL"):
            if not v.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
                raise ConfigError(f"GANTRY_DATABASE_URL must be a postgresql:// URL, got scheme {v.split(':', 1)[0]!r}")
            kw["database_url"] = v
        if v := get("GANTRY_REDIS_URL"):
            if not v.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"GANTRY_REDIS_URL must be a redis://, rediss:// or unix:// URL, got {v.split(':', 1)[0]!r}")
            kw["redis_url"] = v
        if v := get("GANTRY_DATA_DIR"):
            kw["data_dir"] = Path(v).expanduser()
        if v := get("GANTRY_MIGRATE_ON_START"):
            kw["migrate_on_start"] = _bool("GANTRY_MIGRATE_ON_START", v)
        if v := get("GANTRY_SHUTDOWN_GRACE_SECONDS"):
            kw["shutdown_grace_seconds"] = _float("GANTRY_SHUTDOWN_GRACE_SECONDS", v)
        if v := get("GANTRY_LOG_LEVEL"):
            kw["log_level"] = v.upper()
        if v := get("GANTRY_LOG_FORMAT"):
            if v not in {"json", "text"}:
                raise ConfigError(f"GANTRY_LOG_FORMAT must be json or text, got {v!r}")
            kw["log_format"] = v
        if v := get("GANTRY_UVLOOP"):
            kw["use_uvloop"] = _bool("GANTRY_UVLOOP", v)
        if v := get("GANTRY_WORKERS"):
            kw["workers"] = _positive("GANTRY_WORKERS", v, int)
        if v := get("GANTRY_NETUID"):
            if not v.isdigit():
                raise ConfigError(f"GANTRY_NETUID must be a non-negative integer, got {v!r}")
            kw["netuid"] = int(v)
        if v := get("GANTRY_ADMIN_TOKEN"):
            kw["admin_token"] = check_admin_token("GANTRY_ADMIN_TOKEN", v)
        if v := get("GANTRY_KEK"):
            kw["kek"] = v
        if v := get("GANTRY_KEK_PREVIOUS"):
            kw["kek_previous"] = tuple(p.strip() for p in v.split(",") if p.strip())
        if v := get("GANTRY_TRUSTED_PROXIES"):
            kw["trusted_proxies"] = _networks("GANTRY_TRUSTED_PROXIES", v)
        kw.update(_tls_from_env(get))
        embedded = "database_url" not in kw or "redis_url" not in kw
        kw["broker"] = _broker_from_env(get, embedded=embedded, loopback=all(
            is_loopback(kw.get(name, getattr(cls, name))) for name in ("grpc_addr", "http_addr")))
        kw["attestation"] = _attestation_from_env(get)
        kw["launch"] = _launch_from_env(get)
        kw["miner"] = _miner_from_env(get)
        kw["limits"] = _limits_from_env(get)
        return cls(**kw)


def _tls_from_env(get) -> dict:
    """GANTRY_TLS_*: a certificate needs its key (and the reverse), a client CA needs both; files must exist."""
    kw: dict = {}
    for env_name, key in (("GANTRY_TLS_CERT_FILE", "tls_cert_file"), ("GANTRY_TLS_KEY_FILE", "tls_key_file"),
                          ("GANTRY_TLS_CLIENT_CA_FILE", "tls_client_ca_file")):
        if v := get(env_name):
            path = Path(v).expanduser()
            if not path.is_file():
                raise ConfigError(f"{env_name} must name a readable PEM file, got {v!r}")
            kw[key] = path
    if ("tls_cert_file" in kw) != ("tls_key_file" in kw):
        raise ConfigError("GANTRY_TLS_CERT_FILE and GANTRY_TLS_KEY_FILE must be set together")
    if "tls_client_ca_file" in kw and "tls_cert_file" not in kw:
        raise ConfigError("GANTRY_TLS_CLIENT_CA_FILE (mTLS) needs GANTRY_TLS_CERT_FILE and GANTRY_TLS_KEY_FILE")
    if v := get("GANTRY_ALLOW_PLAINTEXT"):
        kw["allow_plaintext"] = _bool("GANTRY_ALLOW_PLAINTEXT", v)
    return kw


_PROVIDERS = ("vastai", "tensordock", "simulated")


ADMIN_TOKEN_MIN_CHARS = 32  # 32 hex digits = 128 bits; `openssl rand -hex 32` gives 64


def check_admin_token(source: str, token: str) -> str:
    """The admin token is the one credential that rules everything: refuse one a person could guess or type.

    At least 32 characters and not a short pattern repeated (at least 8 distinct characters); a random token from
    `openssl rand -hex 32` or `secrets.token_urlsafe(32)` always passes.
    """
    token = token.strip()
    if len(token) < ADMIN_TOKEN_MIN_CHARS or len(set(token)) < 8:
        raise ConfigError(f"{source} is too weak: use at least {ADMIN_TOKEN_MIN_CHARS} random characters "
                          "(e.g. `openssl rand -hex 32`)")
    return token


def _positive(name: str, raw: str, cast=float):
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def is_loopback(addr: str | None) -> bool:
    """host:port on a loopback address ("localhost", 127.0.0.0/8, ::1); a name like 127.example.com is not. No
    address (a listener that is off) counts as loopback: it exposes nothing."""
    import ipaddress

    if not addr:
        return True
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _broker_from_env(get, *, embedded: bool, loopback: bool = True) -> BrokerSettings:
    """Broker settings; a listed provider without its credentials stops the start (no silent demo mode).

    Unset GANTRY_BROKER_PROVIDERS means the simulated provider on the embedded default (a laptop) and no
    provider at all otherwise: a production deployment never serves simulated instances by accident.
    """
    kw: dict = {} if embedded else {"providers": ()}
    if v := get("GANTRY_BROKER_PROVIDERS"):
        names = tuple(p.strip().lower() for p in v.split(",") if p.strip())
        unknown = [n for n in names if n not in _PROVIDERS]
        if unknown or len(set(names)) != len(names):
            raise ConfigError(f"GANTRY_BROKER_PROVIDERS must be a comma list of {', '.join(_PROVIDERS)} "
                              f"without repeats, got {v!r}")
        kw["providers"] = names
    for env_name, key in (("GANTRY_DEPLOYMENT_ID", "deployment_id"), ("GANTRY_VASTAI_API_KEY", "vastai_api_key"),
                          ("GANTRY_VASTAI_BASE_URL", "vastai_base_url"),
                          ("GANTRY_TENSORDOCK_API_TOKEN", "tensordock_api_token"),
                          ("GANTRY_TENSORDOCK_AUTH_ID", "tensordock_auth_id"),
                          ("GANTRY_TENSORDOCK_BASE_URL", "tensordock_base_url")):
        if v := get(env_name):
            kw[key] = v
    if (dep := kw.get("deployment_id")) is not None and not all(c.isalnum() or c in "-_" for c in dep):
        raise ConfigError(f"GANTRY_DEPLOYMENT_ID may hold only letters, digits, '-' and '_', got {dep!r}")
    for env_name, key, cast in (
            ("GANTRY_BROKER_SIMULATED_OFFERS", "simulated_offer_count", int),
            ("GANTRY_VASTAI_RATE_PER_SECOND", "vastai_rate_per_second", float),
            ("GANTRY_VASTAI_BURST", "vastai_burst", int),
            ("GANTRY_TENSORDOCK_RATE_PER_SECOND", "tensordock_rate_per_second", float),
            ("GANTRY_TENSORDOCK_BURST", "tensordock_burst", int),
            ("GANTRY_BROKER_SSH_VERIFY_TIMEOUT_MINUTES", "ssh_verify_timeout_minutes", int),
            ("GANTRY_BROKER_LIFECYCLE_INTERVAL_SECONDS", "lifecycle_interval_seconds", float),
            ("GANTRY_BROKER_RECONCILE_INTERVAL_SECONDS", "reconcile_interval_seconds", float),
            ("GANTRY_BROKER_IDLE_PROBE_INTERVAL_SECONDS", "idle_probe_interval_seconds", float),
            ("GANTRY_BROKER_PRESERVE_HOURS", "preserve_hours", int),
            ("GANTRY_BROKER_INVENTORY_TTL_SECONDS", "inventory_ttl_seconds", float)):
        if v := get(env_name):
            kw[key] = _positive(env_name, v, cast)
    if v := get("GANTRY_BROKER_GHOST_GRACE_MINUTES"):
        if not v.strip().isdigit():
            raise ConfigError(f"GANTRY_BROKER_GHOST_GRACE_MINUTES must be a whole number of minutes >= 0, got {v!r}")
        kw["ghost_grace_minutes"] = int(v)
    if v := get("GANTRY_BROKER_SIMULATED_BOOT_SECONDS"):
        boot = _float("GANTRY_BROKER_SIMULATED_BOOT_SECONDS", v)
        if boot < 0:
            raise ConfigError(f"GANTRY_BROKER_SIMULATED_BOOT_SECONDS must be >= 0, got {v!r}")
        kw["simulated_boot_seconds"] = boot
    if v := get("GANTRY_BROKER_SHUTDOWN_POLICY"):
        if v not in {"keep", "destroy"}:
            raise ConfigError(f"GANTRY_BROKER_SHUTDOWN_POLICY must be keep or destroy, got {v!r}")
        kw["shutdown_policy"] = v
    providers = kw.get("providers", BrokerSettings.providers)
    for env_name, key in (("GANTRY_BROKER_AUTH", "auth"), ("GANTRY_BROKER_INVENTORY_AUTH", "inventory_auth")):
        if (v := get(env_name)) and v not in {"required", "open"}:
            raise ConfigError(f"{env_name} must be required or open, got {v!r}")
        if v:
            kw[key] = v
    if "auth" not in kw:  # a real provider spends money, a public listener reaches the simulated shell
        kw["auth"] = "required" if not loopback or any(p != "simulated" for p in providers) else "open"
    if "vastai" in providers and not kw.get("vastai_api_key"):
        raise ConfigError("GANTRY_BROKER_PROVIDERS lists vastai but GANTRY_VASTAI_API_KEY is not set")
    if "tensordock" in providers and not (kw.get("tensordock_api_token") and kw.get("tensordock_auth_id")):
        raise ConfigError("GANTRY_BROKER_PROVIDERS lists tensordock but GANTRY_TENSORDOCK_API_TOKEN and "
                          "GANTRY_TENSORDOCK_AUTH_ID are not both set")
    return BrokerSettings(**kw)


@dataclass(frozen=True)
class AttestationSettings:
    """TDX attestation (seed 001): where collateral comes from, what is trusted and accepted, how evidence is pulled.
    Reference: docs/attestation.md."""

    pccs_url: str = "https://api.trustedservices.intel.com"  # PCCS or Intel PCS; collateral cached in PostgreSQL
    collateral_dir: Path | None = None  # offline: collateral JSON files (dcap-qvl format) instead of the PCCS
    collateral_max_age_seconds: float = 86400.0  # refetch cached collateral at least this often
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate", "SWHardeningNeeded")
    root_ca_file: Path | None = None  # PEM root of trust replacing Intel's SGX root CA (tests, private PKI)
    measurements_file: Path | None = None  # JSON measurement sets, merged with those loaded through AdminService
    attestation_url: str = "https://{host}:30443/server/attest?nonce={nonce}"  # server registration pull
    # The registration pull goes to a host the miner names: private, loopback and link-local addresses are refused
    # (the validator must not be steered at its own network) unless this is set (a private cluster; tests).
    attestation_allow_private_hosts: bool = False
    client_cert_binding: bool = False  # require report_data[32:64] = sha256(mTLS client cert key) (x-client-cert)
    luks_passphrase: str | None = field(default=None, repr=False)  # root-disk key returned by boot attestation
    gpu_evidence_verifier: tuple[str, ...] = ()  # argv of the GPU evidence verifier; empty refuses registration
    # TEE launch claims pull the chute deployment's evidence from the server's attestation proxy.
    instance_evidence_url: str = "https://{host}:30443/service/chute-service-{deployment_id}/verify"
    # Bounds of every evidence pull (the miner's host answers): body size cap and overall deadline.
    evidence_max_bytes: int = 4 << 20
    evidence_deadline_seconds: float = 30.0


def _attestation_from_env(get) -> AttestationSettings:
    import shlex

    from .domain.attestation.verifier import TCB_STATUSES

    kw: dict = {}
    if v := get("GANTRY_TDX_PCCS_URL"):
        if not v.startswith(("https://", "http://")):
            raise ConfigError(f"GANTRY_TDX_PCCS_URL must be an http(s) URL, got {v!r}")
        kw["pccs_url"] = v
    for env_name, key in (("GANTRY_TDX_COLLATERAL_DIR", "collateral_dir"), ("GANTRY_TDX_ROOT_CA_FILE", "root_ca_file"),
                          ("GANTRY_TDX_MEASUREMENTS_FILE", "measurements_file")):
        if v := get(env_name):
            path = Path(v).expanduser()
            if not path.exists():
                raise ConfigError(f"{env_name} does not exist: {path}")
            kw[key] = path
    if v := get("GANTRY_TDX_COLLATERAL_MAX_AGE_SECONDS"):
        kw["collateral_max_age_seconds"] = _positive("GANTRY_TDX_COLLATERAL_MAX_AGE_SECONDS", v)
    if v := get("GANTRY_TDX_TCB_ACCEPTED"):
        statuses = tuple(p.strip() for p in v.split(",") if p.strip())
        if bad := [st for st in statuses if st not in TCB_STATUSES]:
            raise ConfigError(f"GANTRY_TDX_TCB_ACCEPTED has unknown statuses {bad}; known: {', '.join(TCB_STATUSES)}")
        kw["accepted_tcb_statuses"] = statuses
    if v := get("GANTRY_TDX_ATTESTATION_URL"):
        if "{host}" not in v or "{nonce}" not in v or not v.startswith(("https://", "http://")):
            raise ConfigError("GANTRY_TDX_ATTESTATION_URL must be an http(s) URL template with {host} and {nonce} "
                              f"(and optionally {{server_id}}), got {v!r}")
        kw["attestation_url"] = v
    if v := get("GANTRY_TDX_ATTESTATION_ALLOW_PRIVATE_HOSTS"):
        kw["attestation_allow_private_hosts"] = _bool("GANTRY_TDX_ATTESTATION_ALLOW_PRIVATE_HOSTS", v)
    if v := get("GANTRY_TDX_CLIENT_CERT_BINDING"):
        kw["client_cert_binding"] = _bool("GANTRY_TDX_CLIENT_CERT_BINDING", v)
    if v := get("GANTRY_LUKS_PASSPHRASE"):
        kw["luks_passphrase"] = v
    if v := get("GANTRY_GPU_EVIDENCE_VERIFIER"):
        kw["gpu_evidence_verifier"] = tuple(shlex.split(v))
    if v := get("GANTRY_TDX_INSTANCE_EVIDENCE_URL"):
        if "{host}" not in v or "{deployment_id}" not in v or not v.startswith(("https://", "http://")):
            raise ConfigError("GANTRY_TDX_INSTANCE_EVIDENCE_URL must be an http(s) URL template with {host} and "
                              f"{{deployment_id}}, got {v!r}")
        kw["instance_evidence_url"] = v
    if v := get("GANTRY_TDX_EVIDENCE_MAX_BYTES"):
        kw["evidence_max_bytes"] = _positive("GANTRY_TDX_EVIDENCE_MAX_BYTES", v, int)
    if v := get("GANTRY_TDX_EVIDENCE_DEADLINE_SECONDS"):
        kw["evidence_deadline_seconds"] = _positive("GANTRY_TDX_EVIDENCE_DEADLINE_SECONDS", v)
    return AttestationSettings(**kw)


@dataclass(frozen=True)
class LaunchSettings:
    """Launch configs and instances (seeds 000/002). Reference: docs/instances.md."""

    base_url: str | None = None  # public URL of this API in launch JWTs (url, activation_url); default: http_addr
    ip_check_salt: str | None = field(default=None, repr=False)  # token_check salt; default derived from the KEK
    graval_matrix_n: int | None = None  # fixed Graval matrix size instead of one sized to each GPU's memory
    # StreamLogs: connecting to an instance's log endpoint, and the longest silence of an open stream, before the
    # call ends with UNAVAILABLE (the reference: connect 10 s, no read timeout).
    logs_connect_timeout_seconds: float = 10.0
    logs_idle_timeout_seconds: float = 300.0
    # StreamStartupLogs (GET /miner/instance_logs): the longest a stream stays open (the reference's 300 s cap),
    # and how often it looks for the launch config's instance while there is none yet (the reference: 2 s).
    startup_logs_max_seconds: float = 300.0
    startup_logs_poll_seconds: float = 2.0
    # Key that signs outbound calls to instances (reference §1.7: X-Chutes-Validator ...): a bittensor key URI
    # (mnemonic, `//Name`, or 0x seed). Unset: the calls go unsigned (Gantry has no validator keypair of its own).
    validator_key_uri: str | None = field(default=None, repr=False)


def _launch_from_env(get) -> LaunchSettings:
    kw: dict = {}
    if v := get("GANTRY_LAUNCH_CONFIG_BASE_URL"):
        if not v.startswith(("https://", "http://")):
            raise ConfigError(f"GANTRY_LAUNCH_CONFIG_BASE_URL must be an http(s) URL, got {v!r}")
        kw["base_url"] = v.rstrip("/")
    if v := get("GANTRY_IP_CHECK_SALT"):
        kw["ip_check_salt"] = v
    if v := get("GANTRY_GRAVAL_MATRIX_N"):
        kw["graval_matrix_n"] = _positive("GANTRY_GRAVAL_MATRIX_N", v, int)
    if v := get("GANTRY_LOGS_CONNECT_TIMEOUT_SECONDS"):
        kw["logs_connect_timeout_seconds"] = _positive("GANTRY_LOGS_CONNECT_TIMEOUT_SECONDS", v)
    if v := get("GANTRY_LOGS_IDLE_TIMEOUT_SECONDS"):
        kw["logs_idle_timeout_seconds"] = _positive("GANTRY_LOGS_IDLE_TIMEOUT_SECONDS", v)
    if v := get("GANTRY_STARTUP_LOGS_MAX_SECONDS"):
        kw["startup_logs_max_seconds"] = _positive("GANTRY_STARTUP_LOGS_MAX_SECONDS", v)
    if v := get("GANTRY_STARTUP_LOGS_POLL_SECONDS"):
        kw["startup_logs_poll_seconds"] = _positive("GANTRY_STARTUP_LOGS_POLL_SECONDS", v)
    if v := get("GANTRY_VALIDATOR_KEY_URI"):
        kw["validator_key_uri"] = v
    return LaunchSettings(**kw)


@dataclass(frozen=True)
class MinerSettings:
    """The miner face (seed 003): the event stream and the caches of stats and scores. Reference: docs/miner.md."""

    events_max_len: int = 100_000  # events the Redis Stream keeps at most
    events_max_age_seconds: float = 7 * 24 * 3600.0  # and for at most this long
    events_heartbeat_seconds: float = 15.0  # an idle WatchEvents stream gets a heartbeat this often
    events_subscriber_buffer: int = 1000  # events a subscriber may lag behind before it is dropped
    events_relay_poll_seconds: float = 2.0  # outbox sweep besides LISTEN/NOTIFY (crash recovery, lost notifies)
    stats_cache_seconds: float = 300.0  # GetStats / GetScores / unique chute history results are reused this long
    socketio_auth_timeout_seconds: float = 30.0  # a Socket.IO session must authenticate within this
    background_loops: bool = True  # tests that drive the relay by hand turn its loop off


def _miner_from_env(get) -> MinerSettings:
    kw: dict = {}
    for env_name, key, cast in (
            ("GANTRY_EVENTS_MAX_LEN", "events_max_len", int),
            ("GANTRY_EVENTS_MAX_AGE_SECONDS", "events_max_age_seconds", float),
            ("GANTRY_EVENTS_HEARTBEAT_SECONDS", "events_heartbeat_seconds", float),
            ("GANTRY_EVENTS_SUBSCRIBER_BUFFER", "events_subscriber_buffer", int),
            ("GANTRY_EVENTS_RELAY_POLL_SECONDS", "events_relay_poll_seconds", float),
            ("GANTRY_MINER_STATS_CACHE_SECONDS", "stats_cache_seconds", float),
            ("GANTRY_SOCKETIO_AUTH_TIMEOUT_SECONDS", "socketio_auth_timeout_seconds", float)):
        if v := get(env_name):
            kw[key] = _positive(env_name, v, cast)
    return MinerSettings(**kw)


# Requests per bucket (auth_policy.RATE_LIMITS names each RPC's bucket): (requests, per seconds), counted in Redis
# per caller (user, hotkey, or the IP by the trusted-proxy rule) and shared by every replica.
DEFAULT_RATE_LIMITS: dict[str, tuple[int, int]] = {
    "nonce": (60, 60),  # /servers/nonce, /instances/nonce, runtime nonces: each is a Redis key for 600 s
    "attestation": (30, 60),  # boot and runtime attestation: quote verification, collateral, evidence pulls
    "tee_evidence": (60, 60),  # a fresh quote from the miner's host per call
    "inventory": (120, 60),  # broker inventory and templates
    "session_create": (30, 60),  # each may rent a GPU
    "session_watch": (60, 60),  # opening WatchSession (concurrent streams are capped separately)
    "export": (10, 60),  # the anonymous instance CSV exports (whole-table scans)
    "public": (300, 60),  # other anonymous reads (miner stats, metagraph, token check)
}


@dataclass(frozen=True)
class RateLimitSettings:
    """Request rates per bucket and concurrent server streams (both faces: REST streams are the same RPCs).

    GANTRY_RATE_LIMITS="nonce=30/60,session_create=5/60,export=off" overrides buckets; GANTRY_STREAMS_PER_CALLER
    and GANTRY_STREAMS_PER_PROCESS cap open streams (per caller within a process, and in all; miners' WatchEvents
    is one per miner, so the process default leaves room for 10,000 miners and their reconnects).
    """

    rates: tuple[tuple[str, int, int], ...] = tuple((k, n, s) for k, (n, s) in DEFAULT_RATE_LIMITS.items())
    streams_per_caller: int = 8
    streams_per_process: int = 25_000

    def rate(self, bucket: str) -> tuple[int, int] | None:
        """(requests, per_seconds) of a bucket; None when it is off (or unknown)."""
        return next(((n, s) for name, n, s in self.rates if name == bucket), None)


def _limits_from_env(get) -> RateLimitSettings:
    rates = dict((name, (n, s)) for name, n, s in RateLimitSettings.rates)
    if v := get("GANTRY_RATE_LIMITS"):
        for item in (i.strip() for i in v.split(",") if i.strip()):
            name, _, spec = item.partition("=")
            name, spec = name.strip(), spec.strip()
            if name not in DEFAULT_RATE_LIMITS:
                raise ConfigError(f"GANTRY_RATE_LIMITS: unknown bucket {name!r} (known: "
                                  f"{', '.join(DEFAULT_RATE_LIMITS)})")
            if spec == "off":
                rates.pop(name, None)
                continue
            m = re.match(r"^([1-9][0-9]*)/([1-9][0-9]*)$", spec)
            if not m:
                raise ConfigError(f"GANTRY_RATE_LIMITS: {name} must be REQUESTS/SECONDS (e.g. 60/60) or off, "
                                  f"got {spec!r}")
            rates[name] = (int(m.group(1)), int(m.group(2)))
    kw: dict = {"rates": tuple((k, n, s) for k, (n, s) in rates.items())}
    for env_name, key in (("GANTRY_STREAMS_PER_CALLER", "streams_per_caller"),
                          ("GANTRY_STREAMS_PER_PROCESS", "streams_per_process")):
        if v := get(env_name):
            kw[key] = _positive(env_name, v, int)
    return RateLimitSettings(**kw)
