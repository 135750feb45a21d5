"""Authentication and authorisation for every RPC, driven by `auth_policy.POLICIES`.

The one place Gantry decides who is calling. Cheap on the hot path: the policy lookup is a dict get and
policy-`none` RPCs only record the caller IP. On success the caller identity is in
`gantry_server.domain.auth.caller.current_caller` for the handler; failures raise the error catalogue's
Unauthenticated / PermissionDenied / ResourceExhausted, which the ObservabilityInterceptor (outside this one)
turns into a rich status.
"""
from __future__ import annotations

import hmac
import time
from dataclasses import replace
from typing import Any, Callable

from grpc import aio
from grpc_interceptor import AsyncServerInterceptor
from sqlalchemy import select

from .. import metadata_keys as mk
from ..auth_policy import Policy, policy_for
from ..domain.auth import api_keys, user_tokens
from ..domain.auth.caller import ANONYMOUS, Caller, TrustedProxies, current_caller, peer_ip
from ..domain.auth.launch_tokens import LaunchTokenError, LaunchTokenKeys, bearer_token
from ..domain.auth.nonces import AttestationNonces, BootTokens, NonceRejected
from ..domain.auth.rate_limit import Limit, RateLimited, RateLimiter, StreamGate, StreamsExhausted
from ..domain.auth.signature_nonces import SignatureNonces
from ..domain.auth.signatures import (SignatureError, SignedRequest, request_sha256, single_use_seconds,
                                     verify_request)
from ..errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from ..runtime import Runtime
from ..store.models import metagraph_nodes
from ..store.repositories.user_tokens import UserTokenRepository
from ..store.repositories.users import UserRepository

_NODE = select(metagraph_nodes.c.netuid, metagraph_nodes.c.blacklist_reason)


class _Parts:
    """What the checks need, built once per runtime."""

    def __init__(self, rt: Runtime, launch_keys: LaunchTokenKeys | None) -> None:
        self.rt = rt
        self.nonces = AttestationNonces(rt.redis, rt.clock)
        self.boot_tokens = BootTokens(rt.redis)
        self.limiter = RateLimiter(rt.redis, rt.clock)
        self.signature_nonces = SignatureNonces(rt.redis)
        self.proxies = TrustedProxies(getattr(rt.settings, "trusted_proxies", ()))
        self._launch_keys = launch_keys
        self._user_tokens: user_tokens.UserTokens | None = None

    @property
    def user_tokens(self) -> user_tokens.UserTokens:
        if self._user_tokens is None:
            self._user_tokens = user_tokens.UserTokens(self.rt.keyring)
        return self._user_tokens

    @property
    def launch_keys(self) -> LaunchTokenKeys:
        if self._launch_keys is None:  # the deployment's shared key, loaded by app.py once migrations ran
            self._launch_keys = self.rt.launch_keys
        return self._launch_keys


class _MetagraphCache:
    """(netuid, blacklist_reason) per hotkey for a few seconds: a database round trip per signed call would
    cost more than the rest of auth together (measured: ~1 ms vs ~0.1 ms). A registration, deregistration or
    blacklist entry takes effect within TTL_SECONDS on every replica."""

    TTL_SECONDS = 5.0
    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._rows: dict[str, tuple[float, Any]] = {}

    async def get(self, rt: Runtime, hotkey: str):
        now = time.monotonic()
        hit = self._rows.get(hotkey)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with rt.engine.connect() as conn:
            row = (await conn.execute(_NODE.where(metagraph_nodes.c.hotkey == hotkey))).first()
        if len(self._rows) >= self.MAX_ENTRIES:
            self._rows.clear()
        self._rows[hotkey] = (now + self.TTL_SECONDS, row)
        return row

    def clear(self) -> None:
        self._rows.clear()


class AuthInterceptor(AsyncServerInterceptor):
    """`runtime` is a callable returning the current Runtime (it exists only once the app has started)."""

    def __init__(self, runtime: Callable[[], Runtime | None], *, launch_keys: LaunchTokenKeys | None = None) -> None:
        self._runtime = runtime
        self._launch_keys = launch_keys
        self._parts: _Parts | None = None
        self._metagraph = _MetagraphCache()
        self._streams: StreamGate | None = None  # per process, sized from the first runtime's settings

    def _get_parts(self) -> _Parts:
        rt = self._runtime()
        if self._parts is None or self._parts.rt is not rt:
            self._parts = _Parts(rt, self._launch_keys)
        return self._parts

    async def intercept(self, method: Callable, request: Any, context: aio.ServicerContext, method_name: str) -> Any:
        policy = policy_for(method_name)
        if policy is None:
            raise PermissionDenied(f"{method_name} has no auth policy; refusing it", reason="NO_AUTH_POLICY")
        if policy.kind == "none":
            caller = ANONYMOUS
            if policy.rate_limit:  # anonymous callers are counted by IP (the trusted-proxy rule)
                parts = self._get_parts()
                await self._rate_limit(parts, policy.rate_limit, parts.proxies.of_call(context))
            current_caller.set(caller)
        else:
            caller = await self.authenticate(policy, request, context, method_name)
            current_caller.set(caller)
        result = method(request, context)
        if hasattr(result, "__aiter__"):
            who = caller.user_id or caller.hotkey or caller.ip or self._get_parts().proxies.of_call(context)
            return self._gated(result, who)
        return await result

    async def _rate_limit(self, parts: _Parts, bucket: str, who: str) -> None:
        rate = parts.rt.settings.limits.rate(bucket)
        if rate is None:
            return
        try:
            await parts.limiter.hit(who, bucket, Limit(*rate))
        except RateLimited as exc:
            raise ResourceExhausted(str(exc), retry_after_seconds=exc.retry_after,
                                    metadata={"bucket": bucket}) from None

    async def _gated(self, stream, who: str):
        """The handler's stream, counted against the caller's and the process's caps while it is open."""
        if self._streams is None:
            limits = self._get_parts().rt.settings.limits
            self._streams = StreamGate(limits.streams_per_caller, limits.streams_per_process)
        gate = self._streams
        try:
            gate.acquire(who)
        except StreamsExhausted as exc:
            raise ResourceExhausted(str(exc), reason="STREAMS_EXHAUSTED", retry_after_seconds=exc.retry_after,
                                    metadata={"scope": exc.scope}) from None
        try:
            async for item in stream:
                yield item
        finally:
            gate.release(who)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def authenticate(self, policy: Policy, request, context, method_name: str) -> Caller:
        parts = self._get_parts()
        md = dict(context.invocation_metadata() or ())
        ip = parts.proxies.client_ip(peer_ip(context.peer()), md.get(mk.FORWARDED_FOR))
        kind = policy.kind
        if kind == "admin":
            caller = self._admin(parts.rt, md)
        elif kind == "hotkey":
            caller = await self._hotkey(parts, policy, request, context, md, method_name, ip)
        elif kind == "user":
            caller = await self._user(parts, policy, request, context, md, method_name, ip)
        elif kind == "consumer":
            caller = await self._consumer(parts, policy, request, context, md, method_name, ip)
        elif kind == "launch_token":
            caller = self._launch(parts, policy, request, md, ip)
        elif kind == "boot_token":
            caller = await self._boot(parts, policy, request, md, ip)
        elif kind == "nonce":
            caller = Caller(kind="nonce", ip=ip)
        else:  # pragma: no cover - the policy table test covers every kind
            raise PermissionDenied(f"unknown auth policy kind {kind!r}", reason="NO_AUTH_POLICY")
        if policy.attestation_nonce:
            caller = await self._attestation_nonce(parts, policy.attestation_nonce, md, caller)
        if policy.rate_limit:
            await self._rate_limit(parts, policy.rate_limit, caller.user_id or caller.hotkey or ip)
        return caller

    # -- admin ---------------------------------------------------------------------------------------------
    @staticmethod
    def _admin(rt: Runtime, md: dict) -> Caller:
        if not rt.admin_token:
            raise PermissionDenied("the admin API is disabled: set GANTRY_ADMIN_TOKEN", reason="ADMIN_DISABLED")
        scheme, _, token = (md.get(mk.AUTHORIZATION) or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("admin RPCs need 'authorization: Bearer <admin token>'",
                                  reason="ADMIN_TOKEN_MISSING")
        if not hmac.compare_digest(token.encode(), rt.admin_token.encode()):
            raise Unauthenticated("admin token is not valid", reason="ADMIN_TOKEN_INVALID")
        return Caller(kind="admin")

    # -- hotkey signatures -----------------------------------------------------------------------------------
    async def _hotkey(self, parts: _Parts, policy: Policy, request, context, md: dict, rpc: str, ip: str,
                      *, registered: bool | None = None) -> Caller:
        hotkey, signature, nonce = md.get(mk.HOTKEY), md.get(mk.SIGNATURE), md.get(mk.NONCE)
        expected = f"purpose {policy.purpose!r}" if policy.purpose else "the request body hash"
        if not (hotkey and signature and nonce):
            raise Unauthenticated(
                f"hotkey auth required: send x-chutes-hotkey, x-chutes-signature and x-chutes-nonce, signed v1 "
                f"over {expected} or v2 (x-chutes-sig-version: 2)", reason="HOTKEY_AUTH_MISSING")
        version = md.get(mk.SIG_VERSION) or "1"
        http_method = md.get(mk.HTTP_METHOD) if self._from_gateway(parts, context) else None
        native = http_method is None
        needs_digest = native and (version == "2" or (version in ("", "1") and not policy.purpose))
        signed = SignedRequest(
            hotkey=hotkey, signature=signature, nonce=nonce, version=version, rpc=rpc,
            request_sha256=request_sha256(request) if needs_digest and hasattr(request, "SerializeToString") else "",
            http_method=http_method, http_path=md.get(mk.HTTP_PATH) if http_method else None,
            body_sha256=md.get(mk.BODY_SHA256) if http_method else None)
        rt = parts.rt
        now = rt.clock.now().timestamp()
        try:
            verified = verify_request(signed, policy.purpose, now)
        except SignatureError as exc:
            raise Unauthenticated(str(exc), reason="SIGNATURE_INVALID") from None
        if verified.single_use and not await parts.signature_nonces.claim(hotkey, nonce,
                                                                           single_use_seconds(nonce, now)):
            raise Unauthenticated("Nonce already used (replay): a v2 nonce is single-use; sign again with a new "
                                  "'{ts}.{random}' nonce", reason="NONCE_REPLAYED")
        must_register = policy.registered if registered is None else registered
        is_registered = await self._check_metagraph(rt, hotkey, must_register)
        return Caller(kind="hotkey", ip=ip, hotkey=hotkey, key_type=verified.key_type,
                      sig_version=verified.version, registered=is_registered)

    @staticmethod
    def _from_gateway(parts: _Parts, context) -> bool:
        """Believe the x-gantry-* HTTP metadata only from the in-process REST gateway (its context is not a gRPC
        transport context) or from a remote gateway at a trusted proxy address; a native gRPC client could
        otherwise claim a body hash that differs from the message it sends."""
        if not type(context).__module__.startswith("grpc"):
            return True
        return parts.proxies.trusts(peer_ip(context.peer()))

    async def check_registered(self, hotkey: str) -> None:
        """The metagraph checks of a registered-hotkey RPC for a caller outside gRPC (the Socket.IO adapter):
        PermissionDenied when blacklisted, Unauthenticated when not registered on settings.netuid."""
        await self._check_metagraph(self._get_parts().rt, hotkey, True)

    async def _check_metagraph(self, rt: Runtime, hotkey: str, must_register: bool) -> bool:
        row = await self._metagraph.get(rt, hotkey)
        if row is not None and row.blacklist_reason:
            raise PermissionDenied(f"hotkey {hotkey} is blacklisted: {row.blacklist_reason}",
                                   reason="HOTKEY_BLACKLISTED")
        netuid = rt.settings.netuid
        registered = row is not None and row.netuid == netuid
        if must_register and not registered:
            raise Unauthenticated(f"Hotkey is not registered on netuid {netuid}", reason="HOTKEY_NOT_REGISTERED")
        return registered

    # -- users -----------------------------------------------------------------------------------------------
    async def _user(self, parts: _Parts, policy: Policy, request, context, md: dict, rpc: str, ip: str) -> Caller:
        token = bearer_token(md.get(mk.AUTHORIZATION))
        if token:
            if not token.startswith(api_keys.PREFIX):
                return await self._user_token(parts, token, ip)
            if not api_keys.looks_like_api_key(token):
                raise Unauthenticated("Can't find a user with that api key", reason="API_KEY_INVALID")
            async with parts.rt.engine.connect() as conn:
                user = await UserRepository(conn).user_for_key_hash(api_keys.key_hash(token))
            if user is None:
                raise Unauthenticated("Can't find a user with that api key (unknown or revoked)",
                                      reason="API_KEY_INVALID")
            return Caller(kind="user", ip=ip, user_id=user["user_id"], hotkey=user["hotkey"])
        if md.get(mk.HOTKEY):
            caller = await self._hotkey(parts, policy, request, context, md, rpc, ip, registered=False)
            async with parts.rt.engine.connect() as conn:
                user = await UserRepository(conn).by_hotkey(caller.hotkey)
            if user is None:
                raise Unauthenticated(f"no user has hotkey {caller.hotkey}", reason="USER_NOT_FOUND")
            return Caller(kind="user", ip=ip, user_id=user["user_id"], hotkey=caller.hotkey,
                          key_type=caller.key_type, sig_version=caller.sig_version, registered=caller.registered)
        raise Unauthenticated(f"user auth required: 'authorization: Bearer cpk_...' (API key), 'Bearer <user "
                              f"token>' or a hotkey signature "
                              f"(purpose {policy.purpose!r})", reason="USER_AUTH_MISSING")

    async def _consumer(self, parts: _Parts, policy: Policy, request, context, md: dict, rpc: str,
                        ip: str) -> Caller:
        """A broker consumer: an API-key or user-token user when the policy's switch says "required", else
        anonymous (the seed's credential-less broker; credentials sent anyway are not looked at)."""
        broker = parts.rt.settings.broker
        if not (broker.auth_required if policy.setting == "auth" else getattr(broker, policy.setting) == "required"):
            return Caller(kind="anonymous", ip=ip)
        if not bearer_token(md.get(mk.AUTHORIZATION)):
            raise Unauthenticated("broker calls need 'authorization: Bearer cpk_...' (API key) or 'Bearer <user "
                                  "token>' (GANTRY_BROKER_AUTH=required)", reason="CONSUMER_AUTH_MISSING")
        return await self._user(parts, policy, request, context, md, rpc, ip)

    @staticmethod
    async def _user_token(parts: _Parts, token: str, ip: str) -> Caller:
        """A user token: signature, issuer, audience and expiry (injected clock), then one query for the user
        and the token's revocation."""
        try:
            claims = parts.user_tokens.verify(token, now=parts.rt.clock.now().timestamp())
        except user_tokens.UserTokenError as exc:
            raise Unauthenticated(str(exc), reason=exc.reason) from None
        async with parts.rt.engine.connect() as conn:
            row = await UserTokenRepository(conn).lookup(claims["sub"], claims["jti"])
        if row is None:
            raise Unauthenticated("user token is for a user that does not exist (deleted?)",
                                  reason="USER_NOT_FOUND")
        if row["token_id"] is None:
            raise Unauthenticated("user token is not one this server issued to that user", reason="USER_TOKEN_INVALID")
        if row["revoked_at"] is not None:
            raise Unauthenticated("user token has been revoked", reason="USER_TOKEN_REVOKED")
        return Caller(kind="user", ip=ip, user_id=row["user_id"], hotkey=row["hotkey"])

    # -- launch tokens, boot tokens, attestation nonces ------------------------------------------------------
    @staticmethod
    def _launch(parts: _Parts, policy: Policy, request, md: dict, ip: str) -> Caller:
        token = bearer_token(md.get(mk.AUTHORIZATION))  # "Bearer <jwt>" or the raw JWT alike
        config_id = None if policy.config_from == "token" else getattr(request, "config_id", "")
        try:
            claims = parts.launch_keys.verify(token, config_id, now=parts.rt.clock.now().timestamp())
        except LaunchTokenError as exc:
            raise Unauthenticated(str(exc), reason="LAUNCH_TOKEN_INVALID") from None
        return Caller(kind="launch_token", ip=ip, claims=claims)

    @staticmethod
    async def _boot(parts: _Parts, policy: Policy, request, md: dict, ip: str) -> Caller:
        token = md.get(mk.BOOT_TOKEN)
        hotkey = md.get(mk.HOTKEY) if policy.hotkey_from == "metadata" else getattr(request, "hotkey", "")
        vm_name = getattr(request, "vm_name", "")
        if not token:
            raise InvalidArgument.field("x-boot-token", "required (the boot_token from boot attestation)")
        if not hotkey:
            raise InvalidArgument.field("hotkey" if policy.hotkey_from == "request" else "x-chutes-hotkey",
                                        "required (the hotkey the boot token was issued to)")
        try:
            await parts.boot_tokens.validate(token, hotkey, vm_name)
        except NonceRejected as exc:
            raise Unauthenticated(str(exc), reason=exc.reason) from None
        return Caller(kind="boot_token", ip=ip, hotkey=hotkey, vm_name=vm_name)

    @staticmethod
    async def _attestation_nonce(parts: _Parts, purpose: str, md: dict, caller: Caller) -> Caller:
        nonce = md.get(mk.NONCE) or ""
        try:
            await parts.nonces.consume(nonce, purpose, caller.ip)
        except NonceRejected as exc:
            raise Unauthenticated(f"{exc} (expected an attestation nonce of purpose {purpose!r} in x-chutes-nonce)",
                                  reason=exc.reason) from None
        return replace(caller, attestation_nonce=nonce)
