"""`gantry miner ...`: what Gantry shows and pushes to a miner hotkey, over gRPC (MinerService).

    gantry miner events [--follow] [--since CURSOR] [--reason job_created ...] [--idle 2]
    gantry miner chutes
    gantry miner jobs
    gantry miner stats [--hotkey SS58 | --all]
    gantry miner scores [--hotkey SS58 | --all]
    gantry miner servers

`events` without `--follow` prints the events still retained after CURSOR (default: all of them, "0") and
exits once none has arrived for `--idle` seconds; with `--follow` it keeps printing from CURSOR (default: from
now on), reconnecting and resuming after the last event shown when the stream drops, until interrupted, and
then says on stderr which cursor to pass as `--since` to resume. `--json` prints one object per event
({"cursor", "reason", "message"?, "data", "created_at"}, as clients/go/cmd/gantry-events does), flushed as it
arrives; every other command prints one JSON object.

The hotkey signs every call (grpc-v1): `--hotkey-file PATH` (a bittensor hotkey file, the JSON with
"secretSeed", or a file holding the 32-byte seed in hex), else the hex seed in GANTRY_MINER_SEED (or MINER_SEED,
as the chutes-miner chart names it); `--key-type` sr25519 (default, the network's) or ed25519. Most calls need
the hotkey registered on the server's netuid; `stats` and `scores` are public and take `--hotkey` (no key
needed then) or `--all`. Connection options as for `gantry admin` (cli_tools/common.py).

Exit codes: 0 done (130 for an `events --follow` ended by Ctrl-C); 1 the server refused (its words on stderr), or the
cursor has expired (re-sync with the lists, then start without --since); 2 usage; 3 the server cannot be reached.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import grpc

from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_client import CursorExpired, MinerEvents, Signer, connect

from .common import (EXIT_OK, EXIT_REFUSED, Output, Parser, UsageError, add_connection_options, clean, command_main,
                     message_dict, tls_files, wait_connected, when)

PROG = "gantry miner"
SEED_ENV = ("GANTRY_MINER_SEED", "MINER_SEED")


def _common(defaults: bool) -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    add_connection_options(p, d)
    p.add_argument("--hotkey-file", default=d(None),
                   help="bittensor hotkey file (JSON with secretSeed) or a file with the hex seed "
                        "(else GANTRY_MINER_SEED / MINER_SEED)")
    p.add_argument("--key-type", choices=("sr25519", "ed25519"), default=d("sr25519"),
                   help="the hotkey's scheme (default sr25519)")
    return p


def build_parser() -> argparse.ArgumentParser:
    leaf = [_common(defaults=False)]
    parser = Parser(prog=PROG, description="What a Gantry validator shows and pushes to your miner hotkey.",
                    parents=[_common(defaults=True)])
    cmds = parser.add_subparsers(dest="command", required=True,
                                 metavar="{events,chutes,jobs,stats,scores,servers}")
    p = cmds.add_parser("events", parents=leaf, help="the events Gantry pushes to this hotkey (WatchEvents)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until interrupted")
    p.add_argument("--since", metavar="CURSOR",
                   help='resume after this cursor ("0": all retained; default: all without --follow, '
                        'from now on with it)')
    p.add_argument("--reason", action="append", default=[], help="only this reason (repeat for more)")
    p.add_argument("--idle", type=float, default=2.0,
                   help="without --follow: stop after this many seconds without an event (default 2)")
    cmds.add_parser("chutes", parents=leaf, help="every chute (ListChutes)")
    cmds.add_parser("jobs", parents=leaf, help="jobs no miner has claimed (ListAvailableJobs)")
    for name, what in (("stats", "compute over the last hour, day and 7 days (GetStats)"),
                       ("scores", "7-day compute units and normalised weight (GetScores)")):
        p = cmds.add_parser(name, parents=leaf, help=what)
        who = p.add_mutually_exclusive_group()
        who.add_argument("--hotkey", help="this hotkey instead of your own (no key needed)")
        who.add_argument("--all", action="store_true", help="every hotkey")
    cmds.add_parser("servers", parents=leaf, help="your registered servers and their GPUs (ListServers)")
    return parser


def load_signer(args, required: bool = True) -> Signer | None:
    """The hotkey from --hotkey-file, else GANTRY_MINER_SEED / MINER_SEED; None when neither and not required."""
    build = Signer.from_sr25519_seed if args.key_type == "sr25519" else Signer.from_ed25519_seed
    expected = None
    if args.hotkey_file:
        try:
            text = Path(args.hotkey_file).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"--hotkey-file: cannot read {args.hotkey_file!r}: {exc.strerror or exc}") from None
        if text.startswith("$"):  # "$NACL...", "$ANSIBLE_VAULT...": an encrypted keyfile
            raise UsageError(f"--hotkey-file: {args.hotkey_file!r} is encrypted; use an unencrypted hotkey file "
                             f"or GANTRY_MINER_SEED")
        seed, source = text, "--hotkey-file"
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise UsageError(f"--hotkey-file: {args.hotkey_file!r} is not JSON nor a hex seed") from None
            seed, expected = str(data.get("secretSeed") or ""), data.get("ss58Address")
            if not seed:
                raise UsageError(f"--hotkey-file: {args.hotkey_file!r} has no secretSeed")
    else:
        name = next((n for n in SEED_ENV if os.environ.get(n)), None)
        if name is None:
            if required:
                raise UsageError("no hotkey: pass --hotkey-file PATH or set GANTRY_MINER_SEED (hex seed)")
            return None
        seed, source = os.environ[name], name
    try:
        signer = build(seed.strip())
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if expected and signer.hotkey != expected:
        raise UsageError(f"--hotkey-file: its seed gives {signer.hotkey} as {args.key_type}, not the file's "
                         f"{expected} (--key-type?)")
    return signer


# -- commands ------------------------------------------------------------------------------------------------------
def _event_json(ev: miner_pb2.WatchEventsResponse) -> dict:
    line = {"cursor": ev.cursor, "reason": ev.reason}
    if ev.HasField("message"):
        line["message"] = ev.message
    line["data"] = message_dict(ev.data) if ev.HasField("data") else {}
    line["created_at"] = ev.created_at.ToJsonString()
    return line


def _print_event(out: Output, ev: miner_pb2.WatchEventsResponse) -> None:
    if out.json:
        out.emit_json(_event_json(ev))
        return
    data = message_dict(ev.data) if ev.HasField("data") else {}
    pairs = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in data.items())
    if out.tty:
        from rich.text import Text

        out.console.print(Text.assemble((when(ev.created_at), "dim"), "  ", (clean(ev.reason), "bold cyan"), "  ",
                                        clean(ev.message) if ev.HasField("message") else "", "  ",
                                        (clean(pairs), "dim")), soft_wrap=True)
    else:
        out.line("  ".join(clean(x) for x in (when(ev.created_at), ev.reason, ev.message or "-", pairs) if x))


async def _events(channel, signer, args, out: Output) -> int:
    cursor = args.since if args.since is not None else (None if args.follow else "0")
    retry_note = lambda error, delay: out.note(  # noqa: E731
        f"stream dropped ({error.code().name if isinstance(error, grpc.aio.AioRpcError) else 'ended'}); "
        f"reconnecting in {delay:.1f} s")
    feed = MinerEvents(channel, signer, cursor=cursor, reasons=args.reason, on_retry=retry_note)
    try:
        while True:
            try:
                ev = await asyncio.wait_for(feed.__anext__(), None if args.follow else args.idle)
            except asyncio.TimeoutError:
                return EXIT_OK
            _print_event(out, ev)
    except CursorExpired as exc:
        return out.fail(f"{exc} (list chutes/jobs to re-sync, then run without --since)", EXIT_REFUSED)
    except asyncio.CancelledError:  # Ctrl-C / SIGTERM
        raise
    finally:
        with contextlib.suppress(Exception):
            await feed.aclose()
        if feed.cursor and args.follow:
            out.note(f"last cursor {feed.cursor} (resume with --since {feed.cursor})")


async def _stream(call, request, field: str) -> list:
    return [getattr(row, field) async for row in call(request)]


async def _chutes(stub, signer, args, out: Output) -> int:
    chutes = await _stream(lambda r: stub.ListChutes(r, timeout=args.timeout), miner_pb2.ListChutesRequest(),
                           "chute")
    if out.json:
        out.emit_json({"chutes": [message_dict(c) for c in chutes]})
        return EXIT_OK
    out.table(["chute", "name", "version", "image", "gpus", "bounty", "state"],
              [[c.chute_id, c.name, c.version, c.image, ",".join(c.supported_gpus) or "-",
                c.bounty if c.HasField("bounty") else "-", "disabled" if c.disabled else "enabled"] for c in chutes],
              empty="no chutes", right=("bounty",))
    return EXIT_OK


async def _jobs(stub, signer, args, out: Output) -> int:
    jobs = await _stream(lambda r: stub.ListAvailableJobs(r, timeout=args.timeout),
                         miner_pb2.ListAvailableJobsRequest(), "job")
    if out.json:
        out.emit_json({"jobs": [message_dict(j) for j in jobs]})
        return EXIT_OK
    out.table(["job", "chute", "method", "status", "multiplier", "created"],
              [[j.job_id, j.chute_id, j.method, j.status, f"{j.compute_multiplier:g}", when(j.created_at)]
               for j in jobs], empty="no open jobs", right=("multiplier",))
    return EXIT_OK


def _whose(args, signer) -> str | None:
    if args.all:
        return None
    if args.hotkey:
        return args.hotkey
    if signer is None:
        raise UsageError("whose? pass --hotkey SS58 or --all, or a key (--hotkey-file / GANTRY_MINER_SEED)")
    return signer.hotkey


async def _stats(stub, signer, args, out: Output) -> int:
    request = miner_pb2.GetStatsRequest()
    if (hotkey := _whose(args, signer)) is not None:
        request.miner_hotkey = hotkey
    response = await stub.GetStats(request, timeout=args.timeout)
    if out.json:
        out.emit_json(message_dict(response))
        return EXIT_OK
    rows = [[label, r.miner_hotkey, r.total_instances, r.bounty_count, f"{r.compute_seconds:,.0f}",
             f"{r.compute_units:,.1f}"]
            for label, window in (("past hour", response.past_hour), ("past day", response.past_day),
                                  ("7 days", response.all)) for r in window.instance_stats]
    out.table(["window", "hotkey", "instances", "bounties", "compute s", "compute units"], rows,
              empty="no instance compute in the last 7 days", right=("instances", "bounties", "compute s",
                                                                     "compute units"))
    return EXIT_OK


async def _scores(stub, signer, args, out: Output) -> int:
    request = miner_pb2.GetScoresRequest()
    if (hotkey := _whose(args, signer)) is not None:
        request.hotkey = hotkey
    response = await stub.GetScores(request, timeout=args.timeout)
    if out.json:
        out.emit_json(message_dict(response))
        return EXIT_OK
    keys = sorted(set(response.raw_values) | set(response.final_scores),
                  key=lambda k: -response.final_scores.get(k, 0.0))
    rows = []
    for k in keys:
        raw = response.raw_values.get(k, miner_pb2.RawScore())
        rows.append([k, raw.total_instances, f"{raw.bounty_score:g}", f"{raw.instance_seconds:,.0f}",
                     f"{raw.instance_compute_units:,.1f}", f"{response.final_scores.get(k, 0.0):.6f}"])
    out.table(["hotkey", "instances", "bounty score", "instance s", "compute units", "weight"], rows,
              empty="no score in the last 7 days", right=("instances", "bounty score", "instance s",
                                                          "compute units", "weight"))
    return EXIT_OK


async def _servers(stub, signer, args, out: Output) -> int:
    response = await stub.ListServers(miner_pb2.ListServersRequest(), timeout=args.timeout)
    if out.json:
        out.emit_json(message_dict(response))
        return EXIT_OK
    out.table(["server", "name", "ip", "tee", "gpus", "verified gpus", "created"],
              [[s.server_id, s.name, s.ip, "yes" if s.is_tee else "no", len(s.gpus),
                sum(1 for g in s.gpus if g.HasField("verified_at")), when(s.created_at)] for s in response.servers],
              empty="no servers registered for this hotkey", right=("gpus", "verified gpus"))
    return EXIT_OK


COMMANDS = {"chutes": _chutes, "jobs": _jobs, "stats": _stats, "scores": _scores, "servers": _servers}


async def amain(argv: list[str] | None = None) -> int:
    """Run one `gantry miner` command; returns the exit code (never raises for usage, server or network errors)."""
    return await command_main(PROG, build_parser(), argv, _command)


async def _command(args, out: Output, addr: str) -> int:
    signer = load_signer(args, required=args.command not in ("stats", "scores"))
    if args.command in ("stats", "scores"):
        _whose(args, signer)  # a usage error before any connection
    async with connect(addr, signer=signer, **tls_files(args)) as channel:
        await wait_connected(channel, addr)
        if args.command == "events":
            return await _events(channel, signer, args, out)
        return await COMMANDS[args.command](miner_pb2_grpc.MinerServiceStub(channel), signer, args, out)


def main(argv: list[str] | None = None) -> int:
    from .common import run

    return run(amain, argv)


if __name__ == "__main__":
    sys.exit(main())
