"""What every `gantry` client command shares: connection settings, exit codes, server errors and output.

Connection settings are the same for `gantry admin`, `gantry gpu` and `gantry miner`: `--addr`
(GANTRY_GRPC_ADDR, default 127.0.0.1:50051), `--ca-file` (GANTRY_CA_FILE: TLS, the server verified by this CA;
plaintext without), `--cert-file`/`--key-file` (GANTRY_CERT_FILE/GANTRY_KEY_FILE: a client certificate for a
server that requires one), `--timeout` seconds per RPC, `--json`.

Output: on a terminal, tables and progress are drawn with `rich` (colour off with NO_COLOR); when stdout is not a
terminal, tables are plain aligned columns and progress is one plain line per change on stderr, with no control
characters. Every string that came from the server is stripped of control characters before it is shown, so a
server (or whoever wrote a chute's name) cannot move the cursor or retitle the terminal. `--json` prints JSON on
stdout instead (one object; `gantry miner events` one object per line).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

DEFAULT_ADDR = "127.0.0.1:50051"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CONNECT_TIMEOUT = 5.0  # seconds to establish the connection before the command gives up (exit 3)


class UsageError(Exception):
    """A command line the CLI cannot run (exit 2)."""


class Unreachable(Exception):
    """No connection to the server (exit 3)."""


class Refused(Exception):
    """The command cannot go on for a reason the user should read (exit 1), e.g. a session that failed."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


class RefuseSecret(argparse.Action):
    """A secret typed as an argument is in `ps` and shell history for every local user to read."""

    def __init__(self, option_strings, dest, *, instead: str = "", **kw) -> None:
        kw.pop("default", None)
        self.instead = instead
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{option_string} is not accepted: a secret on the command line is visible to every "
                         f"local user (ps); {self.instead}")


def add_connection_options(p: argparse.ArgumentParser, d=lambda value: value) -> None:
    """--addr, --ca-file, --cert-file, --key-file, --json, --timeout; `d` wraps defaults (argparse.SUPPRESS for
    the copies that subcommands accept after the command)."""
    p.add_argument("--addr", default=d(None), help="server host:port (GANTRY_GRPC_ADDR, default 127.0.0.1:50051)")
    p.add_argument("--ca-file", default=d(None),
                   help="TLS to the server, verified by this CA certificate (GANTRY_CA_FILE; plaintext without)")
    p.add_argument("--cert-file", default=d(None),
                   help="client certificate for a server that requires one, mTLS (GANTRY_CERT_FILE)")
    p.add_argument("--key-file", default=d(None), help="the client certificate's key (GANTRY_KEY_FILE)")
    p.add_argument("--json", action="store_true", default=d(False), help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=d(30.0), help="seconds per RPC (default 30)")


def resolve_addr(args) -> str:
    return args.addr or os.environ.get("GANTRY_GRPC_ADDR") or DEFAULT_ADDR


def tls_files(args) -> dict:
    """--ca-file / --cert-file / --key-file, else GANTRY_CA_FILE / GANTRY_CERT_FILE / GANTRY_KEY_FILE."""
    files = {}
    for flag, env in (("ca_file", "GANTRY_CA_FILE"), ("cert_file", "GANTRY_CERT_FILE"),
                      ("key_file", "GANTRY_KEY_FILE")):
        if value := getattr(args, flag) or os.environ.get(env):
            if not Path(value).is_file():
                raise UsageError(f"--{flag.replace('_', '-')} / {env}: no such file {value!r}")
            files[flag] = value
    if ("cert_file" in files) != ("key_file" in files) or (files and "ca_file" not in files):
        raise UsageError("--cert-file and --key-file go together, and need --ca-file")
    return files


async def wait_connected(channel: grpc.aio.Channel, addr: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Return once the channel is connected; Unreachable at once when the connection fails (a closed port, a TLS
    mismatch) and after `timeout` seconds when it hangs (a filtered port)."""
    C = grpc.ChannelConnectivity
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != C.READY:
        if state in (C.TRANSIENT_FAILURE, C.SHUTDOWN):
            raise Unreachable(f"cannot connect to {addr} (is a Gantry server running there, and does it expect "
                              f"TLS (--ca-file) as given?)")
        left = deadline - loop.time()
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), max(left, 0.0))
        except asyncio.TimeoutError:
            raise Unreachable(f"no connection to {addr} within {timeout:g} s") from None
        state = channel.get_state(try_to_connect=True)


# -- server errors ----------------------------------------------------------------------------------------------
def _status(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - not ours: treat as absent
                return None
            return status
    return None


def error_reason(exc: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason the server attached (None for a failure of the connection itself)."""
    status = _status(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


def retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    status = _status(exc)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def is_transport_failure(exc: grpc.aio.AioRpcError) -> bool:
    """The call never got an answer from Gantry: the connection failed or dropped, or our deadline passed."""
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and _status(exc) is None


def rpc_failure(exc: grpc.aio.AioRpcError, addr: str) -> tuple[str, int]:
    """(message, exit code) for a failed call: the server's words (exit 1), or a lost connection (exit 3)."""
    if is_transport_failure(exc):
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer from {addr} in time (--timeout)", EXIT_UNREACHABLE
        return f"lost the connection to {addr}: {exc.details() or 'unavailable'}", EXIT_UNREACHABLE
    return f"{exc.code().name}: {exc.details() or ''}", EXIT_REFUSED


# -- values -------------------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(value: Any) -> str:
    """A server-provided value as text safe for a terminal: control characters (ESC, bidi overrides) become
    U+FFFD, tabs and newlines a space."""
    return _CONTROL.sub("\ufffd", str(value)).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def message_dict(message) -> dict:
    """A proto message as JSON-ready dict: field names as in the proto, scalars present even when zero."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def when(ts) -> str:
    """A Timestamp (or datetime) as 'YYYY-MM-DD HH:MM:SSZ' (UTC); '-' when unset."""
    if ts is None:
        return "-"
    if not isinstance(ts, datetime):
        if not (ts.seconds or ts.nanos):
            return "-"
        ts = ts.ToDatetime(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def money(amount: float) -> str:
    return f"${amount:,.4f}" if 0 < abs(amount) < 0.01 else f"${amount:,.2f}"


# -- output -------------------------------------------------------------------------------------------------------
def _console(stream):
    """A rich Console on a terminal; 80 columns when the terminal reports none (a pseudo-terminal nobody sized)."""
    from rich.console import Console

    width = None
    try:
        if os.get_terminal_size(stream.fileno()).columns == 0 and not os.environ.get("COLUMNS"):
            width = 80
    except (OSError, ValueError, AttributeError):
        pass
    return Console(file=stream, highlight=False, emoji=False, width=width)


class Output:
    """Where a command writes: tables and results to stdout, progress and notes to stderr.

    `rich` draws only on a terminal (its Console honours NO_COLOR and TERM=dumb); anything else gets plain text
    (FORCE_COLOR is not honoured there: a pipe never receives escape sequences).
    """

    def __init__(self, prog: str, json_mode: bool = False) -> None:
        self.prog = prog
        self.json = json_mode
        self.tty = sys.stdout.isatty()
        self.err_tty = sys.stderr.isatty()
        self._console = self._err_console = None

    @property
    def console(self):
        if self._console is None:
            self._console = _console(sys.stdout)
        return self._console

    @property
    def err_console(self):
        if self._err_console is None:
            self._err_console = _console(sys.stderr)
        return self._err_console

    # results
    def emit_json(self, value: Any) -> None:
        print(json.dumps(value, default=str), flush=True)

    def line(self, text: str = "") -> None:
        """A line of our own text (server values already cleaned by the caller)."""
        print(text, flush=True)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "",
              right: Iterable[str] = ()) -> None:
        rows = [[clean(c) for c in row] for row in rows]
        right = set(right)
        if not rows and empty:
            self.note(empty)
            return
        if self.tty:
            from rich import box
            from rich.table import Table
            from rich.text import Text

            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                          header_style="bold")
            for i, name in enumerate(columns):  # the first column (an id) is never cut; the others fold
                table.add_column(name, justify="right" if name in right else "left", overflow="fold",
                                 no_wrap=i == 0, min_width=max([len(name)] + [len(r[0]) for r in rows]) if i == 0
                                 else None)
            for row in rows:
                table.add_row(*(Text(c) for c in row))
            self.console.print(table)
            return
        widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]

        def fmt(cells):
            return "  ".join(c.rjust(w) if name in right else c.ljust(w)
                             for c, w, name in zip(cells, widths, columns)).rstrip()
        print("\n".join([fmt(columns), *(fmt(row) for row in rows)]), flush=True)

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """A two-column key/value listing."""
        pairs = [(k, clean("-" if v is None or v == "" else v)) for k, v in pairs]
        width = max((len(k) for k, _ in pairs), default=0)
        if self.tty:
            from rich.text import Text

            for k, v in pairs:
                self.console.print(Text.assemble((k.ljust(width), "bold"), "  ", v), soft_wrap=True)
            return
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs), flush=True)

    # stderr
    def note(self, text: str) -> None:
        print(f"{self.prog}: {text}", file=sys.stderr, flush=True)

    def fail(self, message: str, code: int) -> int:
        self.note(" ".join(clean(message).split()))
        return code

    def progress(self, title: str) -> "Progress":
        return Progress(self, title)


class Progress:
    """Progress of a wait on stderr: a spinner with the latest state on a terminal (each change also printed as
    a line above it), one plain line per change otherwise."""

    def __init__(self, out: Output, title: str) -> None:
        self.out = out
        self.title = title
        self._last: str | None = None
        self._status = None
        if out.err_tty:
            from rich.text import Text

            self._status = out.err_console.status(Text(clean(title)), spinner="dots")
            self._status.start()

    def step(self, text: str) -> None:
        text = clean(text)
        if text == self._last:
            return
        self._last = text
        if self._status is not None:
            from rich.text import Text

            self.out.err_console.print(Text.assemble(("• ", "cyan"), text))
            self._status.update(Text(f"{clean(self.title)}: {text}"))
        else:
            print(f"{self.out.prog}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def command_main(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None, body) -> int:
    """Parse `argv`, then run `body(args, out, addr)`; its exit code, or the failure in words with the exit code
    scripts rely on: usage 2, unreachable 3, refused by the server 1 (never a traceback)."""
    out = Output(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        return out.fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    out.json = args.json
    addr = resolve_addr(args)
    try:
        return await body(args, out, addr)
    except UsageError as exc:
        return out.fail(str(exc), EXIT_USAGE)
    except Unreachable as exc:
        return out.fail(str(exc), EXIT_UNREACHABLE)
    except Refused as exc:
        return out.fail(str(exc), EXIT_REFUSED)
    except grpc.aio.AioRpcError as exc:
        return out.fail(*rpc_failure(exc, addr))


def run(amain, argv) -> int:
    """`asyncio.run(amain(argv))`, 130 on Ctrl-C."""
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        return 130
