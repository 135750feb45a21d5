"""Typed settings read once from the environment (GANTRY_*).

Every knob is listed in the README's configuration table; tests build `Settings` directly.
"""
from __future__ import annotations

import os
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
class Settings:
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    http_max_body_bytes: int = 1 << 20  # REST gateway: larger bodies get 413
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("gantry")))
    migrate_on_start: bool = True
    shutdown_grace_seconds: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    use_uvloop: bool = True
    admin_token: str | None = None
    db_pool_size: int = 10
    netuid: int = 64
    kek: str | None = field(default=None, repr=False)  # base64 of 32 bytes; never logged
    kek_previous: tuple[str, ...] = field(default=(), repr=False)
    trusted_proxies: tuple[str, ...] = ()

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
        if v := get("GANTRY_NETUID"):
            if not v.isdigit():
                raise ConfigError(f"GANTRY_NETUID must be a non-negative integer, got {v!r}")
            kw["netuid"] = int(v)
        if v := get("GANTRY_ADMIN_TOKEN"):
            kw["admin_token"] = v
        if v := get("GANTRY_KEK"):
            kw["kek"] = v
        if v := get("GANTRY_KEK_PREVIOUS"):
            kw["kek_previous"] = tuple(p.strip() for p in v.split(",") if p.strip())
        if v := get("GANTRY_TRUSTED_PROXIES"):
            kw["trusted_proxies"] = _networks("GANTRY_TRUSTED_PROXIES", v)
        return cls(**kw)
