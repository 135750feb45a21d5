"""AdminService: what operators create (metagraph nodes, blacklist, users, API keys and user tokens, measurement
policies) and key rotation; chutes, images and jobs land with their issue.

Every call needs `authorization: Bearer <admin token>` (GANTRY_ADMIN_TOKEN; the embedded default keeps a
generated one in GANTRY_DATA_DIR/admin_token), checked by the auth interceptor (policy `admin` in
auth_policy.py). Without a configured token the admin API is off.
"""
from __future__ import annotations

import re
import uuid
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import IntegrityError

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

from ..domain.attestation.measurements import MeasurementEntry, merge, problems
from ..domain.validation import Violations, is_ss58
from ..domain import key_rotation
from ..domain.auth import api_keys, user_tokens
from ..errors import Conflict, FieldViolation, InvalidArgument, NotFound
from ..runtime import Runtime
from ..store.db import unit_of_work
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
        v.require(bool(_USERNAME.match(request.username)), "username", "1-64 of [A-Za-z0-9_.-], starting alphanumeric")
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
        if not _UUID.match(request.user_id):
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
        if not _UUID.match(request.api_key_id):
            raise InvalidArgument.field("api_key_id", "must be an API key id (uuid)")
        async with unit_of_work(self.rt.engine) as conn:
            if not await UserRepository(conn).revoke_api_key(request.api_key_id, self.rt.clock.now()):
                raise NotFound(f"no live API key {request.api_key_id}", reason="API_KEY_NOT_FOUND")
        return admin_pb2.RevokeApiKeyResponse()

    # -- user tokens (domain/auth/user_tokens.py) -------------------------------------------------------------
    async def CreateUserToken(self, request, context):
        """A short-lived bearer for user-facing endpoints; its row (never the token) makes it revocable."""
        v = Violations()
        v.require(bool(_UUID.match(request.user_id)), "user_id", "must be a user id (uuid)")
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
        if not _UUID.match(request.token_id):
            raise InvalidArgument.field("token_id", "must be a user token id (uuid, the token's jti)")
        async with unit_of_work(self.rt.engine) as conn:
            if not await UserTokenRepository(conn).revoke(request.token_id, self.rt.clock.now()):
                raise NotFound(f"no live user token {request.token_id}", reason="USER_TOKEN_NOT_FOUND")
        return admin_pb2.RevokeUserTokenResponse()

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
