"""`gantry gpu ...`: rent a GPU from the broker face, use it over SSH, and finish it, over gRPC.

    gantry gpu offers [--gpu "RTX 4090"] [--max-price 1.5] [--provider P] [--location L] [--min-vram GB]
                      [--min-gpus N] [--min-reliability 0.9] [--min-cuda 12.4] [--limit 20]
    gantry gpu rent OFFER_ID | --gpu "RTX 4090" [--max-price 1.5] [--provider P]
                    [--hours 1] [--workload interactive] [--disk-gb N] [--idle-minutes N] [--no-wait]
    gantry gpu ls [--status running] [--limit 50]
    gantry gpu show ID
    gantry gpu ssh ID [-- COMMAND ...]
    gantry gpu extend ID HOURS
    gantry gpu done ID [--no-wait]
    gantry gpu costs [--since YYYY-MM-DD] [--by session|provider|gpu]

`rent` picks the first offer the server lists for `--gpu` (its order: availability confidence, then price),
creates the session with one idempotency key (`request_id`) that every retry of the create reuses, so a lost
answer never rents twice, stores the session's private key under the user's configuration directory
(`<config>/gantry/sessions/<ID>/key`, mode 0600 in a 0700 directory; `platformdirs`, e.g.
~/.config/gantry on Linux), follows the provisioning with WatchSession and ends with the `ssh` command line,
or the error the server recorded. `ssh` runs OpenSSH with that key; a session exposes no host key, so the
first connection records the instance's key in the session's own known_hosts file (StrictHostKeyChecking
accept-new) and later connections must match it. `done` ends the session, follows the verified destroy and then
deletes the local key.

Credentials: an API key (`cpk_...`) or a user token from `--api-key-file PATH`, else GANTRY_API_KEY (never as an
argument); the session then belongs to that user. Without one (an open broker, as `make run` serves), sessions are
labelled with `--consumer` (GANTRY_CONSUMER_ID, default the login name), and `ls` and `costs` show that label's.
Connection options as for `gantry admin` (cli_tools/common.py).

Exit codes: 0 done; 1 the server refused (its words on stderr) or the session failed; 2 usage; 3 the server
cannot be reached or did not answer (the connection is given 5 s). `ssh` exits with ssh's own status.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import shlex
import shutil
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import grpc

from gantry.broker.v1 import (costs_pb2, costs_pb2_grpc, inventory_pb2, inventory_pb2_grpc, sessions_pb2,
                              sessions_pb2_grpc)
from gantry_client import connect

from .common import (EXIT_OK, EXIT_REFUSED, Output, Parser, RefuseSecret, Refused, UsageError, add_connection_options,
                     clean, command_main, error_reason, is_transport_failure, message_dict, money, retry_after,
                     tls_files, wait_connected, when)

PROG = "gantry gpu"
WORKLOADS = ("interactive", "ssh", "llm", "llm_vllm", "llm_tgi", "training", "batch", "inference", "benchmark")
TERMINAL = ("stopped", "failed")
CREATE_TIMEOUT = 120.0  # the create waits for the provider to accept the instance
CREATE_ATTEMPTS = 5
WATCH_RECONNECTS = 5


# -- local state: the session's key and known_hosts ------------------------------------------------------------
def sessions_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("gantry")) / "sessions"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # whatever the umask or an older directory said
    return path


def key_path(session_id: str) -> Path:
    return sessions_dir() / _safe_id(session_id) / "key"


def known_hosts_path(session_id: str) -> Path:
    return sessions_dir() / _safe_id(session_id) / "known_hosts"


def _safe_id(session_id: str) -> str:
    if not session_id or session_id in (".", "..") or "/" in session_id or "\\" in session_id \
            or len(session_id) > 64:
        raise UsageError(f"{session_id!r} is not a session id")
    return session_id


def store_key(session_id: str, private_key: str) -> Path:
    """Write the key with mode 0600 (created so: never readable by others, not even for a moment)."""
    directory = _private_dir(sessions_dir())
    directory = _private_dir(directory / _safe_id(session_id))
    path = directory / "key"
    tmp = directory / f".key.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, private_key.encode() if private_key.endswith("\n") else (private_key + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def forget_session(session_id: str) -> None:
    shutil.rmtree(sessions_dir() / _safe_id(session_id), ignore_errors=True)


def ssh_argv(session: sessions_pb2.Session, command: list[str] = ()) -> list[str]:
    return ["ssh", "-i", str(key_path(session.id)), "-p", str(session.ssh_port or 22), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts_path(session.id)}", "-o", "StrictHostKeyChecking=accept-new",
            f"{session.ssh_user or 'root'}@{session.ssh_host}", *command]


# -- the command line --------------------------------------------------------------------------------------------
def _common(defaults: bool) -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    add_connection_options(p, d)
    p.add_argument("--api-key-file", default=d(None),
                   help="file holding an API key (cpk_...) or a user token (else GANTRY_API_KEY)")
    p.add_argument("--api-key", action=RefuseSecret, instead="set GANTRY_API_KEY or pass --api-key-file PATH",
                   help=argparse.SUPPRESS)
    p.add_argument("--consumer", default=d(None),
                   help="open broker: the consumer label (GANTRY_CONSUMER_ID, default the login name)")
    return p


def _hours(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of hours") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD") from None


def _offer_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", help='GPU type, e.g. "RTX 4090" (case and spaces ignored)')
    p.add_argument("--max-price", type=float, help="USD per hour, at most")
    p.add_argument("--provider", help="vastai, tensordock, simulated, ...")
    p.add_argument("--location", help="substring of the location, e.g. texas")
    p.add_argument("--min-vram", type=int, help="GB of GPU memory, at least")
    p.add_argument("--min-gpus", type=int, help="GPUs in the offer, at least")


def build_parser() -> argparse.ArgumentParser:
    leaf = [_common(defaults=False)]
    parser = Parser(prog=PROG, description="Rent GPUs from a Gantry broker and use them over SSH.",
                    parents=[_common(defaults=True)])
    cmds = parser.add_subparsers(dest="command", required=True,
                                 metavar="{offers,rent,ls,show,ssh,extend,done,costs}")

    p = cmds.add_parser("offers", parents=leaf, help="list offers, best first (as the server sorts them)")
    _offer_filters(p)
    p.add_argument("--min-reliability", type=float, help="0..1")
    p.add_argument("--min-cuda", type=float, help="CUDA version, e.g. 12.4 (hides offers that report none)")
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20; 0: all)")

    p = cmds.add_parser("rent", parents=leaf, help="rent an offer (or the best one for --gpu) and wait for SSH")
    p.add_argument("offer_id", metavar="OFFER_ID", nargs="?", help="an id from 'gantry gpu offers'")
    _offer_filters(p)
    p.add_argument("--hours", type=_hours, default=1, help="reservation, 1..12 hours (default 1; extendable)")
    p.add_argument("--workload", choices=WORKLOADS, default="interactive")
    p.add_argument("--disk-gb", type=int, help="disk size (default: the provider's)")
    p.add_argument("--idle-minutes", type=int, default=0, help="stop after this many idle minutes (0: never)")
    p.add_argument("--no-wait", action="store_true", help="return once the session is created")

    p = cmds.add_parser("ls", parents=leaf, help="your sessions, newest first")
    p.add_argument("--status", help="pending, provisioning, running, stopping, stopped or failed")
    p.add_argument("--limit", type=_positive, default=50, help="rows to show (default 50)")

    p = cmds.add_parser("show", parents=leaf, help="one session")
    p.add_argument("session_id", metavar="ID")

    p = cmds.add_parser("ssh", parents=leaf, help="open a shell (or run COMMAND) on a running session")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("remote", metavar="COMMAND", nargs=argparse.REMAINDER, help="after --: run this instead")

    p = cmds.add_parser("extend", parents=leaf, help="add hours to a session's reservation")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("hours", metavar="HOURS", type=_hours, help="1..12 (the total never passes the hard max)")

    p = cmds.add_parser("done", parents=leaf, help="end a session and wait until its instance is destroyed")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--no-wait", action="store_true", help="return once the server accepted the end")

    p = cmds.add_parser("costs", parents=leaf, help="what your sessions cost")
    p.add_argument("--since", type=_day, help="from this UTC day (YYYY-MM-DD) to today; default this month")
    p.add_argument("--by", choices=("session", "provider", "gpu"), default="session", help="rows (default session)")
    return parser


# -- talking to the server ----------------------------------------------------------------------------------------
class Client:
    def __init__(self, channel: grpc.aio.Channel, addr: str, args, credential: str | None) -> None:
        self.addr = addr
        self.timeout = args.timeout
        self.metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        self.consumer = args.consumer or os.environ.get("GANTRY_CONSUMER_ID") or ("" if credential else _login())
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(channel)
        self.costs = costs_pb2_grpc.CostServiceStub(channel)

    async def call(self, method, request, timeout: float | None = None):
        return await method(request, metadata=self.metadata, timeout=timeout or self.timeout)

    async def session(self, session_id: str) -> sessions_pb2.Session:
        return (await self.call(self.sessions.GetSession, sessions_pb2.GetSessionRequest(id=session_id))).session

    async def watch(self, session_id: str):
        """Every state of the session until a terminal one; resumes by cursor when the stream drops."""
        cursor, failures = "", 0
        while True:
            call = self.sessions.WatchSession(sessions_pb2.WatchSessionRequest(id=session_id, cursor=cursor),
                                              metadata=self.metadata)
            try:
                async for change in call:
                    failures = 0
                    cursor = change.cursor
                    yield change.session
                return
            except grpc.aio.AioRpcError as exc:
                if not is_transport_failure(exc) or failures >= WATCH_RECONNECTS:
                    raise
            finally:
                call.cancel()
            failures += 1
            await asyncio.sleep(min(0.5 * 2 ** failures, 5.0))


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container): a fixed label
        return "gantry-cli"


def _credential(args) -> str | None:
    if args.api_key_file:
        try:
            value = Path(args.api_key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"--api-key-file: cannot read {args.api_key_file!r}: {exc.strerror or exc}") from None
        if not value:
            raise UsageError(f"--api-key-file: {args.api_key_file!r} is empty")
        return value
    return os.environ.get("GANTRY_API_KEY") or None


def _session_row(s: sessions_pb2.Session) -> list:
    return [s.id, s.status, s.provider, f"{s.gpu_count}x {s.gpu_type}", f"{s.price_per_hour:.3f}",
            when(s.created_at), when(s.expires_at) if s.status not in TERMINAL else when(s.stopped_at)]


def _describe(s: sessions_pb2.Session) -> str:
    """One line for progress: the state and what it means."""
    if s.status == "pending":
        return f"pending: asking {s.provider} for the instance"
    if s.status == "provisioning":
        where = f" at {s.ssh_host}:{s.ssh_port}" if s.ssh_host else ""
        return f"provisioning: instance created{where}, waiting until SSH answers"
    if s.status == "running":
        return "running: SSH verified"
    if s.status == "stopping":
        return "stopping: destroying the instance (verified with the provider)"
    if s.status == "failed":
        return f"failed: {s.error or 'no reason given'}"
    if s.status == "stopped":
        return ("stopped: the provider confirmed the instance stopped; its disk is kept" if s.storage_policy ==
                "preserve" else "stopped: the provider confirmed the instance ended")
    return s.status


# -- commands ------------------------------------------------------------------------------------------------------
async def _offers(c: Client, args, out: Output) -> int:
    request = _offer_request(args)
    if args.min_reliability is not None:
        request.min_reliability = args.min_reliability
    if args.min_cuda is not None:
        request.min_cuda = args.min_cuda
    if args.limit:
        request.limit = args.limit
    response = await c.call(c.inventory.ListOffers, request)
    if out.json:
        out.emit_json(message_dict(response))
        return EXIT_OK
    out.table(["offer", "provider", "gpu", "vram", "$/h", "location", "reliability", "confidence"],
              [[o.id, o.provider, f"{o.gpu_count}x {o.gpu_type}", f"{o.vram_gb} GB", f"{o.price_per_hour:.3f}",
                o.location, f"{o.reliability:.2f}", f"{o.availability_confidence:.2f}"] for o in response.offers],
              empty="no offer matches", right=("vram", "$/h", "reliability", "confidence"))
    if response.total > len(response.offers) and out.tty:
        out.note(f"{len(response.offers)} of {response.total} shown (--limit)")
    return EXIT_OK


def _offer_request(args) -> inventory_pb2.ListOffersRequest:
    request = inventory_pb2.ListOffersRequest(gpu_type=args.gpu or "", provider=args.provider or "",
                                              location=args.location or "")
    for field, value in (("max_price", args.max_price), ("min_vram", args.min_vram),
                         ("min_gpu_count", args.min_gpus)):
        if value is not None:
            setattr(request, field, value)
    return request


async def _pick_offer(c: Client, args, out: Output) -> str:
    if args.offer_id:
        if any(v is not None for v in (args.gpu, args.max_price, args.location, args.min_vram, args.min_gpus)):
            raise UsageError("give OFFER_ID or offer filters (--gpu, --max-price, ...), not both")
        return args.offer_id
    if not args.gpu:
        raise UsageError("give an OFFER_ID (see 'gantry gpu offers') or --gpu TYPE")
    request = _offer_request(args)
    request.limit = 1
    response = await c.call(c.inventory.ListOffers, request)
    if not response.offers:
        wanted = f'{args.gpu}' + (f" at most ${args.max_price}/h" if args.max_price is not None else "")
        raise Refused(f"no available offer for {wanted} (see 'gantry gpu offers --gpu \"{args.gpu}\"')")
    offer = response.offers[0]
    out.note(f"offer {clean(offer.id)}: {offer.gpu_count}x {clean(offer.gpu_type)} at "
             f"{money(offer.price_per_hour)}/h from {clean(offer.provider)}, {clean(offer.location)}")
    return offer.id


async def _create(c: Client, request: sessions_pb2.CreateSessionRequest, out: Output):
    """CreateSession, retried with the same request_id while no answer came back (or the server says the first
    attempt is still running): the server answers a repeated key with the session it already made."""
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return await c.call(c.sessions.CreateSession, request, timeout=max(c.timeout, CREATE_TIMEOUT))
        except grpc.aio.AioRpcError as exc:
            in_progress = exc.code() == grpc.StatusCode.UNAVAILABLE and error_reason(exc) == "UNAVAILABLE"
            if attempt == CREATE_ATTEMPTS or not (is_transport_failure(exc) or in_progress):
                raise
            delay = retry_after(exc) or min(0.5 * 2 ** attempt, 8.0)
            out.note(f"create not confirmed ({exc.code().name}); retrying with the same request id in {delay:g} s")
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def _rent(c: Client, args, out: Output) -> int:
    offer_id = await _pick_offer(c, args, out)
    request = sessions_pb2.CreateSessionRequest(
        consumer_id=c.consumer, offer_id=offer_id, workload_type=args.workload, reservation_hours=args.hours,
        idle_threshold_minutes=args.idle_minutes, request_id=str(uuid.uuid4()))
    if args.disk_gb is not None:
        request.disk_gb = args.disk_gb
    created = await _create(c, request, out)
    session = created.session
    path = store_key(session.id, created.ssh_private_key)
    out.note(f"session {clean(session.id)}: {session.gpu_count}x {clean(session.gpu_type)} on "
             f"{clean(session.provider)} at {money(session.price_per_hour)}/h for {session.reservation_hours} h; "
             f"key saved to {path}")
    if not args.no_wait and session.status not in TERMINAL + ("running",):
        session = await _follow(c, session.id, out, f"renting {session.id}", until=("running",) + TERMINAL)
    return _rent_result(session, path, out)


def _rent_result(session: sessions_pb2.Session, path: Path, out: Output) -> int:
    if session.status in TERMINAL:
        forget_session(session.id)
        if out.json:
            out.emit_json({"session": message_dict(session)})
        return out.fail(f"session {session.id} {session.status}: {session.error or 'no reason given'}",
                        EXIT_REFUSED)
    argv = ssh_argv(session) if session.status == "running" else None
    if out.json:
        out.emit_json({"session": message_dict(session), "key_file": str(path),
                       "ssh_command": shlex.join(argv) if argv else None})
        return EXIT_OK
    if argv is None:
        out.line(f"session {clean(session.id)} is {session.status}; follow it with: gantry gpu show {session.id}")
    else:
        out.line(f"session {clean(session.id)} is running; connect with:")
        out.line(clean(shlex.join(argv)))
        out.line(f"(or: gantry gpu ssh {session.id}; end it with: gantry gpu done {session.id})")
    return EXIT_OK


async def _follow(c: Client, session_id: str, out: Output, title: str, until) -> sessions_pb2.Session:
    """Show each state WatchSession reports until one of `until`; the last state seen."""
    last = None
    with out.progress(title) as progress:
        try:
            async with contextlib.aclosing(c.watch(session_id)) as changes:
                async for session in changes:
                    last = session
                    progress.step(_describe(session))
                    if session.status in until:
                        break
        except asyncio.CancelledError:  # Ctrl-C: the session goes on without us
            progress.close()
            out.note(f"stopped watching; session {session_id} goes on (gantry gpu show {session_id}, "
                     f"gantry gpu done {session_id})")
            raise
    if last is None:  # the stream ended at once: read the state instead
        last = await c.session(session_id)
    return last


async def _ls(c: Client, args, out: Output) -> int:
    rows: list[sessions_pb2.Session] = []
    token = ""
    while len(rows) < args.limit:
        response = await c.call(c.sessions.ListSessions, sessions_pb2.ListSessionsRequest(
            consumer_id=c.consumer, status=args.status or "", page_size=min(args.limit, 100), page_token=token))
        rows += response.sessions
        token = response.next_page_token
        if not token:
            break
    rows = rows[:args.limit]
    if out.json:
        out.emit_json({"sessions": [message_dict(s) for s in rows]})
        return EXIT_OK
    out.table(["session", "status", "provider", "gpu", "$/h", "created", "expires/stopped"],
              [_session_row(s) for s in rows], empty="no sessions", right=("$/h",))
    return EXIT_OK


async def _show(c: Client, args, out: Output) -> int:
    s = await c.session(args.session_id)
    key = key_path(s.id)
    stored = key.is_file()
    argv = ssh_argv(s) if s.status == "running" and s.ssh_host and stored else None
    if out.json:
        out.emit_json({"session": message_dict(s), "key_file": str(key) if stored else None,
                       "ssh_command": shlex.join(argv) if argv else None})
        return EXIT_OK
    out.fields([("id", s.id), ("status", s.status), ("error", s.error if s.HasField("error") else None),
                ("provider", s.provider), ("gpu", f"{s.gpu_count}x {s.gpu_type}"),
                ("price", f"{money(s.price_per_hour)}/h"), ("workload", s.workload_type),
                ("hours", s.reservation_hours), ("created", when(s.created_at)), ("expires", when(s.expires_at)),
                ("stopped", when(s.stopped_at) if s.HasField("stopped_at") else None),
                ("ssh", f"{s.ssh_user}@{s.ssh_host}:{s.ssh_port}" if s.ssh_host else None),
                ("key", str(key) if stored else "not on this machine"),
                ("connect", shlex.join(argv) if argv else None)])
    return EXIT_OK


async def _ssh(c: Client, args, out: Output) -> int:
    remote = args.remote[1:] if args.remote[:1] == ["--"] else args.remote
    s = await c.session(args.session_id)
    if s.status != "running" or not s.ssh_host:
        raise Refused(f"session {s.id} is {s.status}" + (f" ({s.error})" if s.HasField("error") else "")
                      + "; ssh needs a running session")
    if not key_path(s.id).is_file():
        raise Refused(f"no key for session {s.id} on this machine (it is stored only by the 'gantry gpu rent' "
                      f"that created the session, under {sessions_dir()})")
    ssh = shutil.which("ssh")
    if ssh is None:
        raise Refused("the OpenSSH client (ssh) is not installed")
    _private_dir(known_hosts_path(s.id).parent)
    argv = ssh_argv(s, remote)
    proc = await asyncio.create_subprocess_exec(ssh, *argv[1:])
    return await proc.wait()


async def _extend(c: Client, args, out: Output) -> int:
    response = await c.call(c.sessions.ExtendSession,
                            sessions_pb2.ExtendSessionRequest(id=args.session_id, additional_hours=args.hours))
    if out.json:
        out.emit_json(message_dict(response))
    else:
        out.line(f"session {clean(response.session_id)} now expires at {when(response.new_expires_at)}")
    return EXIT_OK


async def _done(c: Client, args, out: Output) -> int:
    response = await c.call(c.sessions.DoneSession, sessions_pb2.DoneSessionRequest(id=args.session_id))
    if args.no_wait:
        session = await c.session(args.session_id)
    else:
        session = await _follow(c, args.session_id, out, f"ending {args.session_id}", until=TERMINAL)
    cost = None
    if session.status in TERMINAL:
        forget_session(session.id)
        cost = (await c.call(c.costs.GetCosts, costs_pb2.GetCostsRequest(session_id=session.id))).total_cost
    if out.json:
        out.emit_json({"session": message_dict(session), "message": response.message, "total_cost": cost})
        return EXIT_OK
    if session.status in TERMINAL:
        out.line(f"session {clean(session.id)} {session.status}; it cost {money(cost)}")
    else:
        out.line(f"session {clean(session.id)} is {session.status}: {clean(response.message)}")
    return EXIT_OK


async def _costs(c: Client, args, out: Output) -> int:
    request = costs_pb2.GetCostsRequest(consumer_id=c.consumer)
    if args.since:
        request.start_date = args.since.isoformat()
        request.end_date = (datetime.now(timezone.utc).date() + timedelta(days=1)).isoformat()
    summary = await c.call(c.costs.GetCosts, request)
    start, end = summary.period_start.ToDatetime(timezone.utc), summary.period_end.ToDatetime(timezone.utc)
    sessions = await _sessions_in(c, start, end) if args.by == "session" else []
    totals = await asyncio.gather(*(c.call(c.costs.GetCosts, costs_pb2.GetCostsRequest(session_id=s.id))
                                    for s in sessions))
    if out.json:
        body = message_dict(summary)
        body["sessions"] = [{**message_dict(s), "total_cost": t.total_cost} for s, t in zip(sessions, totals)]
        out.emit_json(body)
        return EXIT_OK
    if args.by == "session":
        out.table(["session", "status", "provider", "gpu", "$/h", "created", "cost"],
                  [[*_session_row(s)[:6], money(t.total_cost)] for s, t in zip(sessions, totals)],
                  right=("$/h", "cost"))
    else:
        groups = summary.by_provider if args.by == "provider" else summary.by_gpu_type
        out.table([args.by, "cost"], [[k, money(v)] for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
                  right=("cost",))
    out.line(f"total {money(summary.total_cost)} {summary.currency} for {summary.session_count} session(s), "
             f"{summary.hours_used:.2f} h, {when(start)} to {when(end)}")
    return EXIT_OK


async def _sessions_in(c: Client, start: datetime, end: datetime) -> list[sessions_pb2.Session]:
    """The consumer's sessions that ran during [start, end) (the per-session cost column is the whole session's)."""
    found, token = [], ""
    while True:
        page = await c.call(c.sessions.ListSessions, sessions_pb2.ListSessionsRequest(
            consumer_id=c.consumer, page_size=200, page_token=token))
        for s in page.sessions:
            created = s.created_at.ToDatetime(timezone.utc)
            stopped = s.stopped_at.ToDatetime(timezone.utc) if s.HasField("stopped_at") else None
            if created < end and (stopped is None or stopped >= start):
                found.append(s)
        token = page.next_page_token
        oldest = page.sessions[-1].created_at.ToDatetime(timezone.utc) if page.sessions else None
        # Newest first, and a session runs at most the hard maximum (12 h by default): older pages cannot overlap.
        if not token or (oldest is not None and oldest < start - timedelta(days=2)):
            return found


COMMANDS = {"offers": _offers, "rent": _rent, "ls": _ls, "show": _show, "ssh": _ssh, "extend": _extend,
            "done": _done, "costs": _costs}


async def amain(argv: list[str] | None = None) -> int:
    """Run one `gantry gpu` command; returns the exit code (never raises for usage, server or network errors)."""
    return await command_main(PROG, build_parser(), argv, _command)


async def _command(args, out: Output, addr: str) -> int:
    credential = _credential(args)
    async with connect(addr, **tls_files(args)) as channel:
        await wait_connected(channel, addr)
        return await COMMANDS[args.command](Client(channel, addr, args, credential), args, out)


def main(argv: list[str] | None = None) -> int:
    from .common import run

    return run(amain, argv)


if __name__ == "__main__":
    sys.exit(main())
