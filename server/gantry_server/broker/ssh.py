"""What the broker asks of a session's machine over the network: can the consumer SSH in, is it busy, is its API up.

Failure model of every SSH call here, one class per `error_type` (the ``gpu_ssh_verify_errors_by_type`` label,
domain-broker Part 2 §3.4)::

    SshCheckError(error_type, message)      .permanent: retrying cannot help
    ├── key_parse_failed     permanent      the private key we hold does not parse
    ├── auth_failed          permanent      the host refused the key (3 in a row end the session)
    ├── connection_refused                  nothing listens yet (booting)
    ├── timeout                             connect, handshake or command too slow
    ├── network_unreachable                 no route (ENETUNREACH / EHOSTUNREACH)
    ├── dns_failed                          the host name does not resolve
    ├── connection_closed                   the peer hung up mid-way
    ├── command_failed                      logged in, but the command failed or printed something else
    └── unknown

Host keys are **not** checked: a fresh instance's host key is generated on its first boot and no provider
publishes it, so there is nothing to check it against. What protects the consumer is that the session's private
key never leaves the broker and the command run is harmless; no password, agent or user config is ever used.

Metrics are recorded by the caller (the verification loop knows the provider label and whether an attempt was
the last one); these functions only observe.
"""
from __future__ import annotations

import errno
import re
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator

import asyncssh
import httpx

from gantry_server.clock import Clock, SystemClock

ERROR_TYPES: tuple[str, ...] = ("connection_refused", "timeout", "network_unreachable", "dns_failed", "auth_failed",
                                "key_parse_failed", "command_failed", "connection_closed", "unknown")
PERMANENT_ERROR_TYPES = frozenset({"auth_failed", "key_parse_failed"})

# First match wins, so subclasses come before their bases (PermissionDenied is a DisconnectError, gaierror an
# OSError, asyncssh.TimeoutError a TimeoutError).
_EXCEPTION_TYPES: tuple[tuple[type[BaseException], str], ...] = (
    (asyncssh.KeyImportError, "key_parse_failed"),
    (asyncssh.PermissionDenied, "auth_failed"),
    (asyncssh.DisconnectError, "connection_closed"),  # ConnectionLost, protocol errors, server disconnects
    (asyncssh.ChannelOpenError, "command_failed"),  # logged in, but the server refused a session
    (socket.gaierror, "dns_failed"),
    (TimeoutError, "timeout"),
    (ConnectionRefusedError, "connection_refused"),
    (ConnectionError, "connection_closed"),  # reset, aborted, broken pipe
    (EOFError, "connection_closed"),
)
_ERRNO_TYPES: dict[int, str] = {
    errno.ECONNREFUSED: "connection_refused",
    errno.ETIMEDOUT: "timeout",
    errno.ENETUNREACH: "network_unreachable",
    errno.EHOSTUNREACH: "network_unreachable",
    errno.ENETDOWN: "network_unreachable",
    errno.EADDRNOTAVAIL: "network_unreachable",
    errno.ECONNRESET: "connection_closed",
    errno.ECONNABORTED: "connection_closed",
    errno.EPIPE: "connection_closed",
}
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")  # asyncio joins per-address failures into one OSError


class SshCheckError(Exception):
    """A classified failure of an SSH check; `error_type` is one of ERROR_TYPES."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    @property
    def permanent(self) -> bool:
        return self.error_type in PERMANENT_ERROR_TYPES


def classify_exception(exc: BaseException) -> str:
    """The error_type of an exception raised while connecting or running a command."""
    for cls, error_type in _EXCEPTION_TYPES:
        if isinstance(exc, cls):
            return error_type
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_TYPES:
            return _ERRNO_TYPES[exc.errno]
        for code in _ERRNO_IN_TEXT.findall(str(exc)):
            if int(code) in _ERRNO_TYPES:
                return _ERRNO_TYPES[int(code)]
    return "unknown"


def _error(exc: BaseException) -> SshCheckError:
    return SshCheckError(classify_exception(exc), str(exc) or type(exc).__name__)


@asynccontextmanager
async def _connect(host: str, port: int, user: str, private_key: str,
                   connect_timeout: float) -> AsyncIterator[asyncssh.SSHClientConnection]:
    try:
        key = asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        raise SshCheckError("key_parse_failed", f"private key does not parse: {exc}") from None
    try:
        conn = await asyncssh.connect(
            host, port, username=user, client_keys=[key], preferred_auth="publickey",
            known_hosts=None,  # unknowable for a fresh instance: see the module docstring
            agent_path=None, config=None, x509_trusted_certs=None,  # only the session's key, nothing of ours
            connect_timeout=connect_timeout)
    except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes unclassified
        raise _error(exc) from exc
    try:
        async with conn:
            yield conn
    except SshCheckError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _error(exc) from exc


async def check_ssh(host: str, port: int, user: str, private_key: str, *,
                    connect_timeout: float = 10, command_timeout: float = 15) -> None:
    """Log in with the session key only and require ``echo ok`` to print ``ok``; SshCheckError otherwise.

    >>> await check_ssh("127.0.0.1", 2222, "root", keypair.private_pem)   # doctest: +SKIP
    """
    async with _connect(host, port, user, private_key, connect_timeout) as conn:
        result = await conn.run("echo ok", check=False, timeout=command_timeout)
    out = _text(result.stdout).strip()
    if result.exit_status != 0 or out != "ok":
        raise SshCheckError("command_failed", f"`echo ok` exited {result.exit_status} and printed {out[:200]!r}")


# Run as `exec sh -s` so it is POSIX sh whatever the login shell, and so the shell's parent ($PPID) is the sshd
# process of this very connection. Interactive logins are counted as sshd session processes
# ("sshd: root@pts/0", "sshd-session: root@notty" since OpenSSH 9.8) other than ours, from `ps` or, on slim
# images without procps, straight from /proc. Neither `who` (utmp is absent in most containers, and it misses
# non-PTY logins such as VS Code Remote) nor /dev/pts (a detached tmux keeps a PTY forever) is reliable.
# Free disk comes from POSIX `df -Pk`, which busybox also understands (`-BG` is GNU only).
PROBE_SCRIPT = r"""
gpu=$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null | tr '\n' ' ')
echo "gpu=$gpu"
sessions=$(
  { ps -eo pid=,args= 2>/dev/null ||
    for f in /proc/[0-9]*/cmdline; do
      p=${f#/proc/}; printf '%s %s\n' "${p%/cmdline}" "$(tr '\0' ' ' < "$f" 2>/dev/null)"
    done; } |
  awk -v me="$PPID" '$1 != me && $2 ~ /^sshd(-session)?:$/ && $3 ~ /@/ { n++ } END { print n + 0 }')
echo "sessions=$sessions"
disk=$(df -Pk / 2>/dev/null | awk 'NR == 2 { print $4 }')
echo "disk_kb=$disk"
"""


@dataclass(frozen=True)
class Activity:
    """One observation of a session's machine, for idle shutdown and the disk gauge."""

    gpu_utilization_max: float | None  # busiest GPU, percent; None when nvidia-smi is absent or failing
    interactive_sessions: int  # SSH logins other than the probe's own connection
    disk_free_gb: float | None  # GiB free on /
    observed_at: datetime

    def is_idle(self, threshold_pct: float = 5) -> bool:
        """Nobody logged in and no GPU busier than the threshold. Without GPU data, logins alone decide."""
        if self.interactive_sessions > 0:
            return False
        return self.gpu_utilization_max is None or self.gpu_utilization_max < threshold_pct


async def probe_activity(host: str, port: int, user: str, private_key: str, *, connect_timeout: float = 10,
                         command_timeout: float = 15, clock: Clock | None = None) -> Activity:
    """One SSH connection, one small script. SshCheckError when it cannot say who is logged in: no answer is
    never read as "idle"."""
    async with _connect(host, port, user, private_key, connect_timeout) as conn:
        result = await conn.run("exec sh -s", input=PROBE_SCRIPT, check=False, timeout=command_timeout)
    return parse_probe_output(_text(result.stdout), (clock or SystemClock()).now())


def parse_probe_output(text: str, observed_at: datetime) -> Activity:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        sessions = int(fields["sessions"].strip())
    except (KeyError, ValueError):
        raise SshCheckError("command_failed", f"probe output has no login count: {text[:200]!r}") from None
    gpus = [v for v in (_float(t) for t in fields.get("gpu", "").replace(",", " ").split()) if v is not None]
    disk_kb = _float(fields.get("disk_kb", "").strip())
    return Activity(gpu_utilization_max=max(gpus) if gpus else None, interactive_sessions=sessions,
                    disk_free_gb=round(disk_kb / (1024 * 1024), 2) if disk_kb is not None else None,
                    observed_at=observed_at)


def health_url(host: str, port: int, path: str = "/health") -> str:
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}{path}"


async def check_http(url: str, timeout: float = 10) -> bool:
    """Entrypoint mode: is the workload's API up? 2xx or 404 count as up (the server answers, the reference's
    rule); any error, refusal or other status as not yet.

    >>> await check_http(health_url(instance.ssh_host, instance.ports[8000]))   # doctest: +SKIP
    """
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            response = await client.get(url)
    except (httpx.HTTPError, httpx.InvalidURL):
        return False
    return 200 <= response.status_code < 300 or response.status_code == 404


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _float(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None
