"""AdminService: what operators create (metagraph nodes, blacklist, users, API keys and user tokens, measurement
policies, images, chutes, bounties and jobs) and key rotation.

Every change to images, chutes, bounties and jobs is announced to miners (domain/events catalogue) in the
transaction that makes it, so a refused or rolled-back call announces nothing.

Every call needs `authorization: Bearer <admin token>` (GANTRY_ADMIN_TOKEN; the embedded default keeps a
generated one in GANTRY_DATA_DIR/admin_token), checked by the auth interceptor (policy `admin` in
auth_policy.py). Without a configured token the admin API is off.
"""
from __future__ import annotations

import keyword
import math
import re
import uuid
from datetime import timedelta

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import IntegrityError

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

from ..domain.attestation.measurements import MeasurementEntry, merge, problems
from ..domain.validation import Violations, is_ss58
from ..domain import events, key_rotation
from ..domain.miner import reference, rolling_updates
from ..domain.miner.jobs import job_created_event
from ..domain.auth import api_keys, user_tokens
from ..errors import Conflict, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.chutes import ChuteRepository, MissingReference
from ..store.repositories.metagraph import MetagraphRepository
from ..store.repositories.tdx import MeasurementRepository
from ..store.repositories.user_tokens import UserTokenRepository
from ..store.repositories.users import UserRepository
from .servers import file_measurements

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _node_row(node: admin_pb2.MetagraphNode) -> dict:
    row = {f: getattr(node, f) for f in (
        "hotkey", "coldkey", "netuid", "node_id", "incentive", "stake", "tao_stake", "alpha_stake", "trust",
        "vtrust", "last_updated", "ip", "ip_type", "port", "protocol")}
    row["real_host"] = node.real_host if node.HasField("real_host") else None
    row["real_port"] = node.real_port if node.HasField("real_port") else None
    return row


def _timestamp(when) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(when)
    return out


# -- images, chutes and jobs: request checks ----------------------------------------------------------------------
# Ids travel in REST paths (/admin/v1/chutes/{chute_id}), Redis keys and event payloads, hence a plain alphabet;
# 36 characters is the column size (a uuid fits).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,35}")  # fullmatch: "$" would let a trailing \n in
_ID_RULE = "1-36 of [A-Za-z0-9._-], starting alphanumeric"
_DOTTED_VERSION = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){1,3}")
COMPUTE_TYPES = ("gpu", "cpu")
MAX_GPU_COUNT = 8
MAX_BOOST = 1000.0
MAX_BOUNTY = 1_000_000
NODE_SELECTOR_KEYS = ("gpu_count", "min_vram_gb_per_gpu", "include", "exclude", "compute_type")
JOB_PORT_PROTOS = ("tcp", "udp")
RESERVED_JOB_PORTS = {8000: "the API port", 8001: "the log port"}  # every instance maps these itself
_MAX_EXACT_INT = 2 ** 53  # Struct numbers are doubles; integral ones up to this are stored as JSON integers
_MISSING = {"user_id": ("user", "USER_NOT_FOUND"), "image_id": ("image", "IMAGE_NOT_FOUND"),
            "chute_id": ("chute", "CHUTE_NOT_FOUND")}


def _id(v: Violations, field: str, value: str) -> None:
    v.require(bool(_ID.fullmatch(value)), field, f"required: {_ID_RULE}")


def _user_id(v: Violations, value: str) -> None:
    v.require(bool(_UUID.fullmatch(value)), "user_id", "must be a user id (uuid)")


def _text(v: Violations, field: str, value: str, max_len: int, *, whitespace: bool = True,
          optional: bool = False) -> None:
    """Printable text that fits its column; `whitespace=False` for the parts of an image reference."""
    if not value.strip():
        v.require(False, field, "must not be blank when given" if optional else "is required")
        return
    v.require(len(value) <= max_len, field, f"must be at most {max_len} characters")
    v.require(value.isprintable(), field, "must be printable (no control characters)")
    if not whitespace:
        v.require(not any(c.isspace() for c in value), field, "must not contain whitespace")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(value: struct_pb2.Value, field: str, v: Violations):
    """A Struct value as plain JSON that PostgreSQL accepts (no NaN/Infinity, no NUL), naming the offending path."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _json_object(value.struct_value, field, v)
    if kind == "list_value":
        return _json_list(value.list_value, field, v)
    if kind == "number_value":
        number = value.number_value
        if not v.require(math.isfinite(number), field, "must be a finite number"):
            return None
        return int(number) if number.is_integer() and abs(number) <= _MAX_EXACT_INT else number
    if kind == "string_value":
        v.require("\x00" not in value.string_value, field, "must not contain NUL characters")
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _json_object(struct: struct_pb2.Struct, field: str, v: Violations) -> dict:
    out = {}
    for key in sorted(struct.fields):
        v.require("\x00" not in key, field, "keys must not contain NUL characters")
        out[key] = _json(struct.fields[key], f"{field}.{key}", v)
    return out


def _json_list(values: struct_pb2.ListValue, field: str, v: Violations) -> list:
    return [_json(item, f"{field}[{i}]", v) for i, item in enumerate(values.values)]


def _node_selector(selector: struct_pb2.Struct, v: Violations) -> dict:
    """The GPU requirements launch configs match servers against; unknown keys are refused (a typo would
    otherwise be a requirement nobody checks). Null values count as absent and are not stored."""
    raw = {k: x for k, x in _json_object(selector, "node_selector", v).items() if x is not None}
    for key in sorted(set(raw) - set(NODE_SELECTOR_KEYS)):
        v.require(False, f"node_selector.{key}", f"unknown key (known: {', '.join(NODE_SELECTOR_KEYS)})")
    gpu_count = raw.get("gpu_count")
    v.require(_is_int(gpu_count) and 1 <= gpu_count <= MAX_GPU_COUNT, "node_selector.gpu_count",
              f"required: an integer 1..{MAX_GPU_COUNT}")
    vram = raw.get("min_vram_gb_per_gpu")
    v.require(vram is None or (_is_int(vram) and vram >= 0), "node_selector.min_vram_gb_per_gpu",
              "must be an integer >= 0")
    for key in ("include", "exclude"):
        names = raw.get(key)
        if names is None or not v.require(isinstance(names, list), f"node_selector.{key}",
                                          "must be a list of GPU names"):
            continue
        for i, name in enumerate(names):
            v.require(isinstance(name, str) and bool(name.strip()) and len(name) <= 64 and name.isprintable(),
                      f"node_selector.{key}[{i}]", "must be a GPU name (1-64 printable characters)")
    v.require(raw.get("compute_type") in (None, *COMPUTE_TYPES), "node_selector.compute_type",
              'must be "gpu" or "cpu"')
    return raw


def _image_row(request: admin_pb2.UpsertImageRequest) -> dict:
    """The images row of a request, or INVALID_ARGUMENT naming every offending field. Name, tag and patch
    version make up the reference miners pull, so they carry no whitespace; compute_type defaults to "gpu"."""
    v = Violations()
    _id(v, "image_id", request.image_id)
    _user_id(v, request.user_id)
    _text(v, "name", request.name, 255, whitespace=False)
    _text(v, "tag", request.tag, 255, whitespace=False)
    patch_version = request.patch_version if request.HasField("patch_version") else None
    if patch_version is not None:
        _text(v, "patch_version", patch_version, 64, whitespace=False, optional=True)
    compute_type = request.compute_type or "gpu"
    v.require(compute_type in COMPUTE_TYPES, "compute_type", 'must be "gpu" or "cpu"')
    chutes_version = request.chutes_version if request.HasField("chutes_version") else None
    _chutes_version(v, chutes_version)
    v.raise_if_any()
    return dict(image_id=request.image_id, user_id=request.user_id, name=request.name, tag=request.tag,
                patch_version=patch_version, compute_type=compute_type, chutes_version=chutes_version)


def _chutes_version(v: Violations, value: str | None) -> None:
    v.require(value is None or bool(_DOTTED_VERSION.fullmatch(value)), "chutes_version",
              'must be a dotted numeric version such as "0.4.9"')


def _ref_str(v: Violations, given: str | None, filename: str) -> str:
    """What a miner runs: "{module}:{variable}", the module dotted. Absent, the chutes SDK's default: the chute
    file's module and its variable `chute` ("main:chute" without a file name)."""
    ref = given if given is not None else f"{filename.removesuffix('.py') or 'main'}:chute"
    module, _, variable = ref.partition(":")
    valid = len(ref) <= 255 and all(_identifier(part) for part in (*module.split("."), variable))
    if given is None and any(item.field == "filename" for item in v.items):
        return ref  # the refused filename is the one problem to report
    v.require(valid, "ref_str", 'must be "module:variable" (a dotted module, Python identifiers)' if given is not None
              else f'absent, so derived from filename as "{ref}", which is not "module:variable"; give ref_str')
    return ref


def _identifier(name: str) -> bool:
    return name.isascii() and name.isidentifier() and not keyword.iskeyword(name)


def _chute_row(request: admin_pb2.UpsertChuteRequest) -> dict:
    """The whole chutes row of a request (an absent optional is NULL, also on replace), or INVALID_ARGUMENT
    naming every offending field. lock_modules stays NULL when absent: readers apply "true when
    standard_template is set"."""
    v = Violations()
    _id(v, "chute_id", request.chute_id)
    _user_id(v, request.user_id)
    _text(v, "name", request.name, 255)
    _id(v, "image_id", request.image_id)
    _text(v, "version", request.version, 64)

    def given(field: str):
        return getattr(request, field) if request.HasField(field) else None

    chutes_version = given("chutes_version")
    _chutes_version(v, chutes_version)
    node_selector = _node_selector(request.node_selector, v)
    boost = given("boost")
    v.require(boost is None or 0 < boost <= MAX_BOOST, "boost", f"must be > 0 and <= {MAX_BOOST:g}")
    standard_template = given("standard_template")
    if standard_template is not None:
        _text(v, "standard_template", standard_template, 64, optional=True)
    v.require("\x00" not in request.code, "code", "must not contain NUL characters")
    if request.filename:
        _text(v, "filename", request.filename, 255, optional=True)
        v.require(not any(sep in request.filename for sep in "/\\"), "filename", "must be a file name, not a path")
    for field in ("shutdown_after_seconds", "concurrency", "max_instances"):
        v.require(given(field) is None or given(field) > 0, field, "must be > 0 when given")
    jobs = _json_list(request.jobs, "jobs", v)
    cords = _json_list(request.cords, "cords", v)
    ref_str = _ref_str(v, given("ref_str"), request.filename)
    v.raise_if_any()
    return dict(chute_id=request.chute_id, user_id=request.user_id, name=request.name, image_id=request.image_id,
                version=request.version, chutes_version=chutes_version, node_selector=node_selector,
                public=request.public, tee=request.tee, disabled=request.disabled, boost=boost,
                allow_external_egress=request.allow_external_egress, lock_modules=given("lock_modules"),
                standard_template=standard_template, code=request.code, filename=request.filename,
                shutdown_after_seconds=given("shutdown_after_seconds"), concurrency=given("concurrency"),
                encrypted_fs=request.encrypted_fs, preemptible=request.preemptible,
                max_instances=given("max_instances"), jobs=jobs, ref_str=ref_str, cords=cords)


def _job_ports(ports, v: Violations) -> list[dict]:
    """The ports a job declares; a claim must map exactly these (besides 8000 and 8001, which every instance has)."""
    first: dict[tuple[str, int], int] = {}
    for i, port in enumerate(ports):
        _text(v, f"ports[{i}].name", port.name, 64)
        if v.require(1 <= port.port <= 65535, f"ports[{i}].port", "must be 1..65535"):
            v.require(port.port not in RESERVED_JOB_PORTS, f"ports[{i}].port",
                      f"{port.port} is reserved ({RESERVED_JOB_PORTS.get(port.port)} of every instance)")
        v.require(port.proto in JOB_PORT_PROTOS, f"ports[{i}].proto", 'must be "tcp" or "udp"')
        earlier = first.setdefault((port.proto, port.port), i)
        v.require(earlier == i, f"ports[{i}].port", f"{port.proto} {port.port} is already declared by ports[{earlier}]")
    return [{"name": p.name, "port": p.port, "proto": p.proto} for p in ports]


def _job_row(request: admin_pb2.CreateJobRequest) -> dict:
    v = Violations()
    if request.HasField("job_id"):
        _id(v, "job_id", request.job_id)
    _id(v, "chute_id", request.chute_id)
    _user_id(v, request.user_id)
    _text(v, "method", request.method, 255, whitespace=False)
    job_args = _json_object(request.job_args, "job_args", v)
    ports = _job_ports(request.ports, v)
    multiplier = request.compute_multiplier if request.HasField("compute_multiplier") else None
    v.require(multiplier is None or (math.isfinite(multiplier) and multiplier > 0), "compute_multiplier",
              "must be a finite number > 0 when given")
    v.raise_if_any()
    return dict(job_id=request.job_id if request.HasField("job_id") else str(uuid.uuid4()),
                chute_id=request.chute_id, user_id=request.user_id, method=request.method, job_args=job_args,
                ports=ports, compute_multiplier=multiplier)


def _only_id(field: str, value: str) -> None:
    """The check of a request that names one row by id."""
    v = Violations()
    _id(v, field, value)
    v.raise_if_any()


def _missing(field: str, value: str) -> NotFound:
    noun, reason = _MISSING[field]
    return NotFound(f"{field}: no {noun} {value}", reason=reason, metadata={"field": field})


async def _require_user(conn, user_id: str):
    user = await UserRepository(conn).get(user_id)
    if user is None:
        raise _missing("user_id", user_id)
    return user


def _image_event(row: dict, created: bool, *, owner: str, chute_ids: list[str]) -> events.Event:
    if created:
        return events.image_created(row["image_id"])
    return events.image_updated(
        row["image_id"], short_tag=row["tag"], patch_version=row["patch_version"],
        chutes_version=row["chutes_version"], chute_ids=chute_ids,
        image=reference.image_reference(owner, row["name"], row["tag"], row["patch_version"]))


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._user_tokens: user_tokens.UserTokens | None = None

    async def UpsertMetagraphNodes(self, request, context):
        v = Violations()
        v.require(len(request.nodes) > 0, "nodes", "at least one node is required")
        seen: set[str] = set()
        for i, node in enumerate(request.nodes):
            v.require(is_ss58(node.hotkey), f"nodes[{i}].hotkey", "must be an SS58 address")
            v.require(not node.coldkey or is_ss58(node.coldkey), f"nodes[{i}].coldkey", "must be an SS58 address")
            v.require(node.hotkey not in seen, f"nodes[{i}].hotkey", "appears twice in this request")
            v.require(node.netuid >= 0, f"nodes[{i}].netuid", "must be >= 0")
            v.require(0 <= node.port <= 65535, f"nodes[{i}].port", "must be 0..65535")
            v.require(node.ip_type in (0, 4, 6), f"nodes[{i}].ip_type", "must be 4 or 6")
            seen.add(node.hotkey)
        v.raise_if_any()
        async with unit_of_work(self.rt.engine) as conn:
            now = self.rt.clock.now()
            count = await MetagraphRepository(conn).upsert({**_node_row(n), "synced_at": now} for n in request.nodes)
        return admin_pb2.UpsertMetagraphNodesResponse(upserted=count)

    async def SetBlacklist(self, request, context):
        """Blacklisted hotkeys are refused by every hotkey-authenticated RPC (auth reads metagraph_nodes)."""
        v = Violations()
        v.require(is_ss58(request.hotkey), "hotkey", "must be an SS58 address")
        v.require(len(request.reason) <= 1024, "reason", "must be at most 1024 characters")
        v.raise_if_any()
        reason = request.reason.strip() or None
        async with unit_of_work(self.rt.engine) as conn:
            if not await MetagraphRepository(conn).set_blacklist(request.hotkey, reason):
                raise NotFound(f"hotkey {request.hotkey} is not in the metagraph")
        response = admin_pb2.SetBlacklistResponse(hotkey=request.hotkey)
        if reason:
            response.blacklist_reason = reason
        return response

    async def CreateUser(self, request, context):
        v = Violations()
        v.require(bool(_USERNAME.fullmatch(request.username)), "username", "1-64 of [A-Za-z0-9_.-], starting alphanumeric")
        v.require(not request.HasField("hotkey") or is_ss58(request.hotkey), "hotkey", "must be an SS58 address")
        v.require(not request.HasField("coldkey") or is_ss58(request.coldkey), "coldkey", "must be an SS58 address")
        v.raise_if_any()
        try:
            async with unit_of_work(self.rt.engine) as conn:
                user_id = await UserRepository(conn).create_user(
                    username=request.username,
                    hotkey=request.hotkey if request.HasField("hotkey") else None,
                    coldkey=request.coldkey if request.HasField("coldkey") else None,
                    roles=list(request.roles), now=self.rt.clock.now())
        except IntegrityError:
            raise Conflict("a user with this username or hotkey already exists", reason="USER_EXISTS") from None
        return admin_pb2.CreateUserResponse(user_id=user_id)

    async def CreateApiKey(self, request, context):
        if not _UUID.fullmatch(request.user_id):
            raise InvalidArgument.field("user_id", "must be a user id (uuid)")
        secret = api_keys.new_api_key()
        now = self.rt.clock.now()
        async with unit_of_work(self.rt.engine) as conn:
            repo = UserRepository(conn)
            if await repo.get(request.user_id) is None:
                raise NotFound(f"no user {request.user_id}", reason="USER_NOT_FOUND")
            key_id = await repo.create_api_key(user_id=request.user_id, name=request.name,
                                               key_prefix=api_keys.display_prefix(secret),
                                               key_hash=api_keys.key_hash(secret), now=now)
        return admin_pb2.CreateApiKeyResponse(api_key_id=key_id, secret_key=secret, created_at=_timestamp(now))

    async def RevokeApiKey(self, request, context):
        if not _UUID.fullmatch(request.api_key_id):
            raise InvalidArgument.field("api_key_id", "must be an API key id (uuid)")
        async with unit_of_work(self.rt.engine) as conn:
            if not await UserRepository(conn).revoke_api_key(request.api_key_id, self.rt.clock.now()):
                raise NotFound(f"no live API key {request.api_key_id}", reason="API_KEY_NOT_FOUND")
        return admin_pb2.RevokeApiKeyResponse()

    # -- user tokens (domain/auth/user_tokens.py) -------------------------------------------------------------
    async def CreateUserToken(self, request, context):
        """A short-lived bearer for user-facing endpoints; its row (never the token) makes it revocable."""
        v = Violations()
        v.require(bool(_UUID.fullmatch(request.user_id)), "user_id", "must be a user id (uuid)")
        ttl = request.ttl_seconds or user_tokens.DEFAULT_TTL_SECONDS
        v.require(user_tokens.MIN_TTL_SECONDS <= ttl <= user_tokens.MAX_TTL_SECONDS, "ttl_seconds",
                  f"must be {user_tokens.MIN_TTL_SECONDS}..{user_tokens.MAX_TTL_SECONDS} seconds")
        v.require(len(request.name) <= 255, "name", "must be at most 255 characters")
        v.raise_if_any()
        if self._user_tokens is None:
            self._user_tokens = user_tokens.UserTokens(self.rt.keyring)
        now = self.rt.clock.now().replace(microsecond=0)  # JWT times are whole seconds
        expires = now + timedelta(seconds=ttl)
        token_id = str(uuid.uuid4())
        async with unit_of_work(self.rt.engine) as conn:
            if await UserRepository(conn).get(request.user_id) is None:
                raise NotFound(f"no user {request.user_id}", reason="USER_NOT_FOUND")
            repo = UserTokenRepository(conn)
            await repo.prune_expired(request.user_id, now)
            await repo.create(token_id=token_id, user_id=request.user_id, name=request.name, issued_at=now,
                              expires_at=expires)
        token = self._user_tokens.issue(user_id=request.user_id, token_id=token_id, now=int(now.timestamp()),
                                        ttl_seconds=ttl)
        return admin_pb2.CreateUserTokenResponse(token_id=token_id, token=token, issued_at=_timestamp(now),
                                                 expires_at=_timestamp(expires))

    async def RevokeUserToken(self, request, context):
        if not _UUID.fullmatch(request.token_id):
            raise InvalidArgument.field("token_id", "must be a user token id (uuid, the token's jti)")
        async with unit_of_work(self.rt.engine) as conn:
            if not await UserTokenRepository(conn).revoke(request.token_id, self.rt.clock.now()):
                raise NotFound(f"no live user token {request.token_id}", reason="USER_TOKEN_NOT_FOUND")
        return admin_pb2.RevokeUserTokenResponse()

    # -- images, chutes and jobs (reference §3.1) ---------------------------------------------------------------
    async def UpsertImage(self, request, context):
        """Create or replace an image: image_created, or image_updated with the reference miners now pull and
        the chutes that use it (a stock miner rewrites those chutes' image and chutes_version)."""
        row = _image_row(request)
        now = self.rt.clock.now()
        try:
            async with unit_of_work(self.rt.engine) as conn:
                owner = await _require_user(conn, row["user_id"])
                repo = ChuteRepository(conn)
                created = await repo.upsert_image(row, now=now)
                chute_ids = [] if created else await repo.chute_ids_of_image(row["image_id"])
                await events.publish(conn, _image_event(row, created, owner=owner["username"], chute_ids=chute_ids),
                                     now=now)
        except MissingReference as exc:  # the owner went away between the check and the write
            raise _missing(exc.field, row[exc.field]) from None
        return admin_pb2.UpsertImageResponse(image_id=row["image_id"], created=created)

    async def DeleteImage(self, request, context):
        """Refused while a chute uses the image (delete or re-point those chutes first). The image row stays
        locked from the check to the delete, so no chute can start using it in between."""
        _only_id("image_id", request.image_id)
        now = self.rt.clock.now()
        async with unit_of_work(self.rt.engine) as conn:
            repo = ChuteRepository(conn)
            if await repo.lock_image(request.image_id) is None:
                raise _missing("image_id", request.image_id)
            using = await repo.chute_ids_of_image(request.image_id)
            if using:
                shown = ", ".join(using[:10]) + (", ..." if len(using) > 10 else "")
                raise FailedPrecondition(
                    f"image {request.image_id} is used by {len(using)} chute{'s' if len(using) != 1 else ''} "
                    f"({shown}): delete them or point them at another image first", reason="IMAGE_IN_USE",
                    metadata={"chutes": str(len(using))}, http_status=409)
            await repo.delete_image(request.image_id)
            await events.publish(conn, events.image_deleted(request.image_id), now=now)
        return admin_pb2.DeleteImageResponse()

    async def UpsertChute(self, request, context):
        """Create or replace the whole chute; also how an operator disables one (disabled=true) before deleting it."""
        row = _chute_row(request)
        now = self.rt.clock.now()
        try:
            async with unit_of_work(self.rt.engine) as conn:
                repo = ChuteRepository(conn)
                await _require_user(conn, row["user_id"])
                if await repo.get_image(row["image_id"]) is None:
                    raise _missing("image_id", row["image_id"])
                before = await repo.lock_chute(row["chute_id"])  # the version being replaced, held until commit
                created = await repo.upsert_chute(row, now=now)
                announce = events.chute_created if created else events.chute_updated
                await events.publish(conn, announce(row["chute_id"], row["version"],
                                                    reference.job_only(row["cords"], row["jobs"])), now=now)
                if before is not None and before["version"] != row["version"]:
                    await rolling_updates.begin(conn, row["chute_id"], before["version"], row["version"], now=now)
        except MissingReference as exc:
            raise _missing(exc.field, row[exc.field]) from None
        return admin_pb2.UpsertChuteResponse(chute_id=row["chute_id"], created=created)

    async def DeleteChute(self, request, context):
        """Refused while instances exist: deleting would cascade them away under running miners, untracked.
        The chute row stays locked from the count to the delete, so no instance can slip in between."""
        chute_id = request.chute_id
        if not chute_id or len(chute_id) > 36:
            raise InvalidArgument.field("chute_id", "required: a chute id (at most 36 characters)")
        async with unit_of_work(self.rt.engine) as conn:
            repo = ChuteRepository(conn)
            chute = await repo.lock_chute(chute_id)
            if chute is None:
                raise NotFound(f"no chute {chute_id}", reason="CHUTE_NOT_FOUND")
            count = await repo.count_instances(chute_id)
            if count:
                raise FailedPrecondition(
                    f"chute {chute_id} still has {count} instance{'s' if count != 1 else ''}: disable it first "
                    f"(UpsertChute with disabled=true) and delete it once its instances are gone",
                    reason="CHUTE_HAS_INSTANCES", metadata={"instances": str(count)}, http_status=409)
            await repo.delete_chute(chute_id)  # its launch configs and jobs cascade
            await events.publish(conn, events.chute_deleted(chute_id, chute["version"]), now=self.rt.clock.now())
        return admin_pb2.DeleteChuteResponse()

    async def SetChuteBounty(self, request, context):
        """Offer a bounty on the chute's next instance, or withdraw it with 0; every miner hears bounty_change."""
        v = Violations()
        _id(v, "chute_id", request.chute_id)
        v.require(0 <= request.bounty <= MAX_BOUNTY, "bounty", f"must be 0..{MAX_BOUNTY:,} (0 withdraws the bounty)")
        v.raise_if_any()
        now = self.rt.clock.now()
        async with unit_of_work(self.rt.engine) as conn:
            if not await ChuteRepository(conn).set_bounty(request.chute_id, request.bounty or None, now=now):
                raise _missing("chute_id", request.chute_id)
            await events.publish(conn, events.bounty_change(request.chute_id, request.bounty), now=now)
        response = admin_pb2.SetChuteBountyResponse(chute_id=request.chute_id)
        if request.bounty:
            response.bounty = request.bounty
        return response

    async def CreateJob(self, request, context):
        """An unclaimed job (status "pending"), announced to every miner as job_created."""
        row = _job_row(request)
        now = self.rt.clock.now()
        try:
            async with unit_of_work(self.rt.engine) as conn:
                repo = ChuteRepository(conn)
                chute = await repo.get_chute(row["chute_id"])
                if chute is None:
                    raise _missing("chute_id", row["chute_id"])
                if chute["disabled"]:
                    raise FailedPrecondition(f"chute_id: chute {row['chute_id']} is disabled; no miner can run "
                                             f"its jobs", reason="CHUTE_DISABLED", metadata={"field": "chute_id"})
                await _require_user(conn, row["user_id"])
                if not await repo.create_job(row, now=now):
                    raise Conflict(f"job_id: a job {row['job_id']} already exists", reason="JOB_EXISTS",
                                   metadata={"field": "job_id"})
                await events.publish(conn, job_created_event(await repo.get_job(row["job_id"]), chute), now=now)
        except MissingReference as exc:
            raise _missing(exc.field, row[exc.field]) from None
        return admin_pb2.CreateJobResponse(job_id=row["job_id"])

    # -- secrets at rest -----------------------------------------------------------------------------------
    async def RotateKeys(self, request, context):
        """Runs in the server because the server holds the keyring (GANTRY_KEK + GANTRY_KEK_PREVIOUS) already:
        the operator needs only the admin token, and key material never has to reach an operator's shell.
        Batches commit as they go, so a cancelled call keeps its progress and a rerun finishes the rest."""
        batch = request.batch_size or key_rotation.DEFAULT_BATCH_SIZE
        if not 1 <= batch <= key_rotation.MAX_BATCH_SIZE:
            raise InvalidArgument.field("batch_size", f"must be 1..{key_rotation.MAX_BATCH_SIZE}")
        reports = await key_rotation.rotate_all(self.rt.engine, self.rt.keyring, batch_size=batch)
        return admin_pb2.RotateKeysResponse(active_key_id=self.rt.keyring.active_id, columns=[
            admin_pb2.EncryptedColumnRotation(column=r.column, scanned=r.scanned, rewrapped=r.rewrapped,
                                              current=r.current, changed_concurrently=r.changed_concurrently,
                                              failed=r.failed) for r in reports])

    # -- TDX measurement policy (seed 001 attestation; domain/attestation/measurements.py) ---------------------
    @staticmethod
    def _policy_message(entry) -> admin_pb2.MeasurementPolicy:
        out = admin_pb2.MeasurementPolicy(version=entry.version, name=entry.name, mrtd=entry.mrtd,
                                          boot_rtmrs=entry.boot_rtmrs, runtime_rtmrs=entry.runtime_rtmrs,
                                          expected_gpus=entry.expected_gpus)
        if entry.gpu_count is not None:
            out.gpu_count = entry.gpu_count
        return out

    async def PutMeasurementPolicy(self, request, context):
        """Create or replace one allowed measurement set; it applies to the next attestation on every replica."""
        fields = dict(name=request.name, version=request.version, mrtd=request.mrtd,
                      boot_rtmrs=list(request.boot_rtmrs), runtime_rtmrs=list(request.runtime_rtmrs),
                      expected_gpus=list(request.expected_gpus),
                      gpu_count=request.gpu_count if request.HasField("gpu_count") else None)
        if bad := problems(**fields):
            raise InvalidArgument.fields([FieldViolation(field, why) for field, why in bad])
        entry = MeasurementEntry.of(**fields)
        async with unit_of_work(self.rt.engine) as conn:
            created = await MeasurementRepository(conn).put(entry, self.rt.clock.now())
        return admin_pb2.PutMeasurementPolicyResponse(policy=self._policy_message(entry), created=created)

    async def ListMeasurementPolicies(self, request, context):
        """Every entry a quote may match: GANTRY_TDX_MEASUREMENTS_FILE overlaid by the stored ones."""
        async with self.rt.engine.connect() as conn:
            stored = await MeasurementRepository(conn).all()
        entries = merge(file_measurements(self.rt.settings.attestation), stored)
        return admin_pb2.ListMeasurementPoliciesResponse(policies=[self._policy_message(e) for e in entries])
