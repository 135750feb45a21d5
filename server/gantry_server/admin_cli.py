"""`gantry admin ...`: operator commands against a running server, over gRPC (AdminService).

    gantry admin user create --username alice [--hotkey 5F...] [--coldkey 5F...]
    gantry admin apikey create USER_ID [--name laptop]        # prints the secret once
    gantry admin apikey revoke KEY_ID
    gantry admin token create USER_ID [--ttl 3600] [--name ci]  # a user token (JWT), printed once
    gantry admin token revoke TOKEN_ID
    gantry admin rotate-keys [--batch-size 500]                # secrets at rest under the server's GANTRY_KEK
    gantry admin metagraph upsert --hotkey 5F... --uid 7 [--netuid 64] [--coldkey 5F...]
    gantry admin blacklist set HOTKEY REASON
    gantry admin blacklist clear HOTKEY
    gantry admin image put IMAGE_ID --user-id USER_ID --name vllm --tag 0.8.4 [--patch-version P] [--compute-type cpu]
                                                                [--chutes-version 0.4.9]
    gantry admin image delete IMAGE_ID                          # refused while a chute uses the image
    gantry admin chute put [CHUTE_ID] --file chute.json [--disabled | --enabled]
    gantry admin chute delete CHUTE_ID                          # refused while the chute has instances
    gantry admin chute bounty CHUTE_ID N                        # offer a bounty of N (0..1000000; 0 withdraws it)
    gantry admin job create --file job.json                     # or: --chute-id C --user-id U --method M
                                                                #     [--job-id J] [--args JSON] [--port rpc:9000/tcp]

A chute or job file is one JSON object whose keys are the request fields (UpsertChuteRequest, CreateJobRequest in
proto/gantry/admin/v1/admin.proto); flags given as well win over the file's keys, and `--file -` reads stdin.
A chute put replaces the whole chute, so disabling one is the same file with `--disabled`; delete it once its
instances are gone.

Common options (before or after the command): `--addr` (GANTRY_GRPC_ADDR, default 127.0.0.1:50051), the admin
token from `--token-file PATH`, else GANTRY_ADMIN_TOKEN, else GANTRY_DATA_DIR/admin_token as the embedded default
writes it (never from the command line, where `ps` shows it to every local user: `--token` is refused), `--ca-file`
(GANTRY_CA_FILE: TLS to a server with GANTRY_TLS_CERT_FILE, verified by this CA; `--cert-file`/`--key-file`,
GANTRY_CERT_FILE/GANTRY_KEY_FILE, for one that requires client certificates), `--json` (one JSON
object on stdout for scripts; otherwise a short table), `--timeout` seconds.

Exit codes: 0 done; 1 the server refused or could not be reached (one line on stderr: gRPC code and message),
or rotate-keys left rows it could not decrypt (counts still printed); 2 usage (one line on stderr).
`amain(argv)` is the same command as a coroutine, for callers already running an event loop (tests run the
server on theirs). rotate-keys runs in the server, which holds GANTRY_KEK and GANTRY_KEK_PREVIOUS (docs/auth.md);
raise --timeout for a large database (a timed-out run keeps its committed batches; run it again).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_client import connect

from .cli_tools.common import RefuseSecret, UsageError, add_connection_options, resolve_addr
from .cli_tools.common import Parser as _Parser
from .cli_tools.common import tls_files as _tls_files

PROG = "gantry admin"
EXIT_OK, EXIT_RPC, EXIT_USAGE = 0, 1, 2


def _common(defaults: bool) -> argparse.ArgumentParser:
    """The shared options, accepted before or after the command (leaf copies default to SUPPRESS)."""
    p = _Parser(add_help=False)
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    add_connection_options(p, d)
    p.add_argument("--token-file", default=d(None),
                   help="file holding the admin token (else GANTRY_ADMIN_TOKEN, else GANTRY_DATA_DIR/admin_token)")
    p.add_argument("--token", action=RefuseSecret, instead="set GANTRY_ADMIN_TOKEN or pass --token-file PATH",
                   help=argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    leaf = [_common(defaults=False)]
    parser = _Parser(prog=PROG, description="Operator commands against a running Gantry server (AdminService).",
                     parents=[_common(defaults=True)])
    areas = parser.add_subparsers(dest="area", required=True,
                                  metavar="{user,apikey,token,rotate-keys,metagraph,blacklist,image,chute,job}")

    user = areas.add_parser("user", help="users").add_subparsers(dest="action", required=True)
    p = user.add_parser("create", parents=leaf, help="create a user")
    p.add_argument("--username", required=True)
    p.add_argument("--hotkey", help="SS58 hotkey the user signs with")
    p.add_argument("--coldkey", help="SS58 coldkey")

    key = areas.add_parser("apikey", help="API keys").add_subparsers(dest="action", required=True)
    p = key.add_parser("create", parents=leaf, help="issue an API key (the secret is printed once)")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--name", default="", help="a label for the key")
    p = key.add_parser("revoke", parents=leaf, help="revoke an API key")
    p.add_argument("key_id", metavar="KEY_ID")

    tok = areas.add_parser("token", help="user tokens").add_subparsers(dest="action", required=True)
    p = tok.add_parser("create", parents=leaf, help="issue a user token (the token is printed once)")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--ttl", type=int, default=0, help="lifetime in seconds, 60..86400 (default 3600)")
    p.add_argument("--name", default="", help="a label for the token")
    p = tok.add_parser("revoke", parents=leaf, help="revoke a user token")
    p.add_argument("token_id", metavar="TOKEN_ID")

    p = areas.add_parser("rotate-keys", parents=leaf,
                         help="re-encrypt secrets at rest under the server's active GANTRY_KEK (run after every "
                              "replica has the new key, with the old one in GANTRY_KEK_PREVIOUS)")
    p.add_argument("--batch-size", type=int, default=0, help="rows per transaction, 1..10000 (default 500)")
    p.set_defaults(action=None)

    graph = areas.add_parser("metagraph", help="metagraph nodes").add_subparsers(dest="action", required=True)
    p = graph.add_parser("upsert", parents=leaf, help="add or update one node")
    p.add_argument("--hotkey", required=True)
    p.add_argument("--uid", type=int, required=True, help="the node's uid on the subnet")
    p.add_argument("--netuid", type=int, default=64)
    p.add_argument("--coldkey", default="")

    black = areas.add_parser("blacklist", help="hotkey blacklist").add_subparsers(dest="action", required=True)
    p = black.add_parser("set", parents=leaf, help="blacklist a hotkey with a reason shown to its miner")
    p.add_argument("hotkey", metavar="HOTKEY")
    p.add_argument("reason", metavar="REASON")
    p = black.add_parser("clear", parents=leaf, help="lift a hotkey's blacklist")
    p.add_argument("hotkey", metavar="HOTKEY")

    image = areas.add_parser("image", help="chute images").add_subparsers(dest="action", required=True)
    p = image.add_parser("put", parents=leaf, help="create or replace an image")
    p.add_argument("image_id", metavar="IMAGE_ID")
    p.add_argument("--user-id", required=True, help="owner (their username prefixes the image reference)")
    p.add_argument("--name", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--patch-version", help='appended as "-<patch_version>" to the tag')
    p.add_argument("--compute-type", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--chutes-version", help="version of the chutes SDK the image was built with, e.g. 0.4.9")
    p = image.add_parser("delete", parents=leaf, help="delete an image no chute uses")
    p.add_argument("image_id", metavar="IMAGE_ID")

    chute = areas.add_parser("chute", help="chutes").add_subparsers(dest="action", required=True)
    p = chute.add_parser("put", parents=leaf, help="create or replace a chute from a JSON file")
    p.add_argument("chute_id", metavar="CHUTE_ID", nargs="?", help="overrides the file's chute_id")
    p.add_argument("--file", required=True, help="JSON object of UpsertChuteRequest fields ('-': stdin)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disabled", dest="disabled", action="store_const", const=True,
                       help="store the chute disabled (no new instances; the way to retire it)")
    state.add_argument("--enabled", dest="disabled", action="store_const", const=False)
    p = chute.add_parser("delete", parents=leaf, help="delete a chute without instances (jobs and configs go too)")
    p.add_argument("chute_id", metavar="CHUTE_ID")
    p = chute.add_parser("bounty", parents=leaf, help="offer a bounty on the chute's next instance (0 withdraws it)")
    p.add_argument("chute_id", metavar="CHUTE_ID")
    p.add_argument("bounty", metavar="N", type=_int32, help="0..1000000")

    job = areas.add_parser("job", help="jobs").add_subparsers(dest="action", required=True)
    p = job.add_parser("create", parents=leaf, help="post an unclaimed job for a chute")
    p.add_argument("--file", help="JSON object of CreateJobRequest fields ('-': stdin)")
    p.add_argument("--job-id", help="default: generated by the server")
    p.add_argument("--chute-id")
    p.add_argument("--user-id", help="the user billed for the job")
    p.add_argument("--method", help="the chute job method to run")
    p.add_argument("--args", type=_json_object, help="job_args as a JSON object")
    p.add_argument("--port", action="append", type=_job_port, metavar="NAME:PORT[/PROTO]",
                   help="a port the job declares (proto tcp or udp, default tcp); repeat for more")
    return parser


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _int32(text: str) -> int:
    """An integer the request can carry (the server checks the range it accepts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -2 ** 31 <= value < 2 ** 31:
        raise argparse.ArgumentTypeError(f"{text} is out of range")
    return value


def _job_port(text: str) -> dict:
    name, _, rest = text.rpartition(":")
    number, _, proto = rest.partition("/")
    if not name or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:PORT[/PROTO], e.g. rpc:9000/tcp")
    return {"name": name, "port": int(number), "proto": proto or "tcp"}


def _request(message_type, path: str | None, flags: dict):
    """A request from a JSON file of its fields (keys as in the proto, snake_case or camelCase), flags winning;
    unknown keys and ill-typed values are usage errors naming them."""
    data: dict = {}
    if path:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path} must hold one JSON object whose keys are {message_type.DESCRIPTOR.name} fields")
    data.update((k, v) for k, v in flags.items() if v is not None)
    fields = message_type.DESCRIPTOR.fields
    known = {f.name for f in fields} | {f.json_name for f in fields}
    if unknown := sorted(set(data) - known):
        raise UsageError(f"{path or 'request'}: unknown field(s) {', '.join(unknown)} of "
                         f"{message_type.DESCRIPTOR.name} (fields: {', '.join(f.name for f in fields)})")
    try:
        return json_format.ParseDict(data, message_type())
    except json_format.ParseError as exc:
        raise UsageError(f"{path or 'request'}: {str(exc).splitlines()[0][:300]}") from None


def _data_dir() -> Path:
    configured = os.environ.get("GANTRY_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("gantry"))


def resolve_token(token_file: str | None) -> str:
    """--token-file, else GANTRY_ADMIN_TOKEN, else the embedded default's GANTRY_DATA_DIR/admin_token."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise UsageError(f"--token-file: cannot read {token_file!r}: {exc.strerror or exc}") from None
        if not token:
            raise UsageError(f"--token-file: {token_file!r} is empty")
        return token
    if os.environ.get("GANTRY_ADMIN_TOKEN"):
        return os.environ["GANTRY_ADMIN_TOKEN"]
    path = _data_dir() / "admin_token"
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise UsageError(f"no admin token: set GANTRY_ADMIN_TOKEN, pass --token-file, or run the embedded server that "
                         f"writes {path}")
    return token


# -- commands: each returns the rows it shows ------------------------------------------------------------------
async def _user_create(stub, args, timeout):
    request = admin_pb2.CreateUserRequest(username=args.username)
    if args.hotkey:
        request.hotkey = args.hotkey
    if args.coldkey:
        request.coldkey = args.coldkey
    response = await stub.CreateUser(request, timeout=timeout)
    return {"user_id": response.user_id, "username": args.username, "hotkey": args.hotkey}


async def _apikey_create(stub, args, timeout):
    response = await stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=args.user_id, name=args.name),
                                       timeout=timeout)
    return {"api_key_id": response.api_key_id, "secret_key": response.secret_key, "user_id": args.user_id,
            "name": args.name, "created_at": response.created_at.ToJsonString()}


async def _apikey_revoke(stub, args, timeout):
    await stub.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=args.key_id), timeout=timeout)
    return {"api_key_id": args.key_id, "revoked": True}


async def _token_create(stub, args, timeout):
    request = admin_pb2.CreateUserTokenRequest(user_id=args.user_id, name=args.name)
    if args.ttl:
        request.ttl_seconds = args.ttl
    response = await stub.CreateUserToken(request, timeout=timeout)
    return {"token_id": response.token_id, "token": response.token, "user_id": args.user_id, "name": args.name,
            "expires_at": response.expires_at.ToJsonString()}


async def _token_revoke(stub, args, timeout):
    await stub.RevokeUserToken(admin_pb2.RevokeUserTokenRequest(token_id=args.token_id), timeout=timeout)
    return {"token_id": args.token_id, "revoked": True}


async def _rotate_keys(stub, args, timeout):
    request = admin_pb2.RotateKeysRequest()
    if args.batch_size:
        request.batch_size = args.batch_size
    response = await stub.RotateKeys(request, timeout=timeout)
    columns = [{"column": c.column, "scanned": c.scanned, "rewrapped": c.rewrapped, "current": c.current,
                "changed_concurrently": c.changed_concurrently, "failed": c.failed} for c in response.columns]
    return {"active_key_id": response.active_key_id, "columns": columns}


async def _metagraph_upsert(stub, args, timeout):
    node = admin_pb2.MetagraphNode(hotkey=args.hotkey, node_id=args.uid, netuid=args.netuid, coldkey=args.coldkey)
    response = await stub.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[node]), timeout=timeout)
    return {"hotkey": args.hotkey, "uid": args.uid, "netuid": args.netuid, "upserted": response.upserted}


async def _blacklist(stub, hotkey: str, reason: str, timeout):
    response = await stub.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey=hotkey, reason=reason), timeout=timeout)
    return {"hotkey": response.hotkey,
            "blacklist_reason": response.blacklist_reason if response.HasField("blacklist_reason") else None}


async def _blacklist_set(stub, args, timeout):
    if not args.reason.strip():
        raise UsageError("REASON must not be empty (use 'gantry admin blacklist clear HOTKEY' to lift a blacklist)")
    return await _blacklist(stub, args.hotkey, args.reason, timeout)


async def _blacklist_clear(stub, args, timeout):
    return await _blacklist(stub, args.hotkey, "", timeout)


async def _image_put(stub, args, timeout):
    request = admin_pb2.UpsertImageRequest(image_id=args.image_id, user_id=args.user_id, name=args.name,
                                           tag=args.tag, compute_type=args.compute_type)
    if args.patch_version:
        request.patch_version = args.patch_version
    if args.chutes_version is not None:
        request.chutes_version = args.chutes_version
    response = await stub.UpsertImage(request, timeout=timeout)
    return {"image_id": response.image_id, "created": response.created}


async def _image_delete(stub, args, timeout):
    await stub.DeleteImage(admin_pb2.DeleteImageRequest(image_id=args.image_id), timeout=timeout)
    return {"image_id": args.image_id, "deleted": True}


async def _chute_put(stub, args, timeout):
    request = _request(admin_pb2.UpsertChuteRequest, args.file,
                       {"chute_id": args.chute_id, "disabled": args.disabled})
    response = await stub.UpsertChute(request, timeout=timeout)
    return {"chute_id": response.chute_id, "created": response.created, "disabled": request.disabled}


async def _chute_delete(stub, args, timeout):
    await stub.DeleteChute(admin_pb2.DeleteChuteRequest(chute_id=args.chute_id), timeout=timeout)
    return {"chute_id": args.chute_id, "deleted": True}


async def _chute_bounty(stub, args, timeout):
    response = await stub.SetChuteBounty(admin_pb2.SetChuteBountyRequest(chute_id=args.chute_id,
                                                                         bounty=args.bounty), timeout=timeout)
    return {"chute_id": response.chute_id, "bounty": response.bounty if response.HasField("bounty") else None}


async def _job_create(stub, args, timeout):
    request = _request(admin_pb2.CreateJobRequest, args.file, {
        "job_id": args.job_id, "chute_id": args.chute_id, "user_id": args.user_id, "method": args.method,
        "job_args": args.args, "ports": args.port})
    response = await stub.CreateJob(request, timeout=timeout)
    return {"job_id": response.job_id, "chute_id": request.chute_id, "method": request.method}


COMMANDS = {
    ("user", "create"): _user_create,
    ("apikey", "create"): _apikey_create,
    ("apikey", "revoke"): _apikey_revoke,
    ("token", "create"): _token_create,
    ("token", "revoke"): _token_revoke,
    ("rotate-keys", None): _rotate_keys,
    ("metagraph", "upsert"): _metagraph_upsert,
    ("blacklist", "set"): _blacklist_set,
    ("blacklist", "clear"): _blacklist_clear,
    ("image", "put"): _image_put,
    ("image", "delete"): _image_delete,
    ("chute", "put"): _chute_put,
    ("chute", "delete"): _chute_delete,
    ("chute", "bounty"): _chute_bounty,
    ("job", "create"): _job_create,
}


def _cell(v) -> str:
    if isinstance(v, list):  # rows of counts (rotate-keys): one line each
        return "\n".join(" ".join(f"{k}={x}" for k, x in item.items()) for item in v) or "-"
    return "-" if v is None or v == "" else str(v).lower() if isinstance(v, bool) else str(v)


def _table(row: dict) -> str:
    width = max(len(k) for k in row)
    shown = {k: _cell(v).replace("\n", "\n" + " " * (width + 2)) for k, v in row.items()}
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in shown.items())


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)
    return code


async def amain(argv: list[str] | None = None) -> int:
    """Run one admin command; returns the exit code (never raises for usage or RPC errors)."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        token = resolve_token(args.token_file)
        addr = resolve_addr(args)
        async with connect(addr, admin_token=token, **_tls_files(args)) as channel:
            row = await COMMANDS[(args.area, args.action)](admin_pb2_grpc.AdminServiceStub(channel), args,
                                                           args.timeout)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except grpc.aio.AioRpcError as exc:
        return _fail(f"{exc.code().name}: {exc.details() or ''}", EXIT_RPC)
    if args.json:
        print(json.dumps(row))
    else:
        print(_table(row))
        if "secret_key" in row or "token" in row:
            print(f"{PROG}: the secret is shown only this once; store it now", file=sys.stderr)
    failed = sum(c["failed"] for c in row.get("columns", ()))
    if failed:
        return _fail(f"{failed} secret(s) could not be decrypted with the server's keys and were left as they are "
                     f"(see the server log; keep GANTRY_KEK_PREVIOUS until they are dealt with)", EXIT_RPC)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
