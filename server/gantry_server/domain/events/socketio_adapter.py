"""The Socket.IO face of the event feed, for a STOCK Chutes miner agent (../shared/docs/miner-contract.md §b).

    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])
    sockets = MinerSockets.for_runtime(sio, lambda: app.rt, auth_interceptor.check_registered)
    # gantry_gateway.server mounts it at /socket.io/ on the REST port

The protocol, as the miner's python-socketio client speaks it:

    client                                      server
    connect                                     (a session; nothing is ever sent to it before auth)
    authenticate {X-Chutes-Hotkey,              v1 signature over "{ss58}:{nonce}:sockets", 600 s window,
                  X-Chutes-Nonce,               hotkey registered on settings.netuid and not blacklisted
                  X-Chutes-Signature}
                                                auth_success {"message": "Authenticated"}
                                                  then every open job as miner_broadcast job_created (replay)
                                                  then live miner_broadcast {reason, message?, data}
                                          or    auth_failed {"error": "<why>"} and disconnect

Stricter than the reference: an unauthenticated session receives nothing (the reference broadcasts public events
to every connected session) and is disconnected after `auth_timeout` seconds. Every authenticated session of a
hotkey gets its events (the reference delivers targeted ones only to the hotkey's latest session): each session
holds its own hub subscription, which costs memory, not a Redis connection.

Around the replay, a job_created that reached the session's subscription while the replay ran is skipped when the
replay already announced that job. One still in flight (committed, not yet read from the stream by this process)
when the replay reads can arrive twice; only one claim of a job succeeds (JOB_TAKEN). A session that falls behind
the hub (SubscriberTooSlow) loses its transport, so python-socketio reconnects, re-authenticates and gets the open
jobs again.

Sessions end in one of two ways. A Socket.IO disconnect (refused auth, auth timeout) makes python-socketio stop
for good. A dropped transport (`drop_transport`: lagging behind the hub, the hub closing because the process
stops, the auth check failing on our side, an unexpected error) makes it reconnect and authenticate again.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from ...errors import PermissionDenied, Unauthenticated
from ...store.repositories.instance_records import keyset_pages
from ...store.repositories.miner import MinerRepository
from ..auth.signatures import SignatureError, SignedRequest, verify_request
from ..miner.jobs import job_created_event
from .hub import HubClosed, SubscriberTooSlow

log = logging.getLogger(__name__)

PURPOSE = "sockets"  # what the miner signs: "{ss58}:{nonce}:sockets"
BROADCAST = "miner_broadcast"
AUTH_SUCCESS = {"message": "Authenticated"}
DEFAULT_AUTH_TIMEOUT = 30.0  # seconds a session may stay unauthenticated
_HOTKEY, _NONCE, _SIGNATURE = "x-chutes-hotkey", "x-chutes-nonce", "x-chutes-signature"
_EXPECTED = ("send a dict with X-Chutes-Hotkey, X-Chutes-Nonce (unix seconds) and X-Chutes-Signature (sr25519, "
             f"128 hex) signed v1 over '{{hotkey}}:{{nonce}}:{PURPOSE}'")


class AuthFailed(Exception):
    """Why an `authenticate` was refused; the text goes to the miner as auth_failed's `error`."""


class Transport(Protocol):
    """What the adapter needs of a python-socketio AsyncServer (tests pass a recorder)."""

    async def emit(self, event: str, data: Any = None, to: str | None = None) -> None: ...

    async def disconnect(self, sid: str) -> None: ...


def broadcast_payload(event) -> dict:
    """The miner_broadcast body of a hub StreamEvent or a catalogue Event: never recipients, never validator."""
    payload: dict[str, Any] = {"reason": event.reason}
    if event.message is not None:
        payload["message"] = event.message
    payload["data"] = event.data
    return payload


class SocketAuthenticator:
    """Checks one `authenticate` payload: the v1 signature (Gantry's signature code, at `now()`, the injected
    clock) and then `check_hotkey` (the metagraph checks of hotkey-signed RPCs: registered on netuid, not
    blacklisted; raises Unauthenticated or PermissionDenied)."""

    def __init__(self, now: Callable[[], datetime], check_hotkey: Callable[[str], Awaitable[Any]]) -> None:
        self.now = now
        self.check_hotkey = check_hotkey

    async def authenticate(self, data: Any) -> str:
        """The hotkey, or AuthFailed naming what was expected."""
        if not isinstance(data, dict):
            raise AuthFailed(f"authenticate payload must be a dict, got {type(data).__name__}: {_EXPECTED}")
        fields = {k.lower(): v for k, v in data.items() if isinstance(k, str)}
        missing = [name for name in (_HOTKEY, _NONCE, _SIGNATURE)
                   if not isinstance(fields.get(name), str) or not fields[name]]
        if missing:
            shown = ", ".join("-".join(p.capitalize() for p in m.split("-")) for m in missing)
            raise AuthFailed(f"missing {shown}: {_EXPECTED}")
        hotkey = fields[_HOTKEY]
        signed = SignedRequest(hotkey=hotkey, signature=fields[_SIGNATURE], nonce=fields[_NONCE], version="1",
                               rpc="socket.io authenticate", request_sha256="")
        try:
            verify_request(signed, PURPOSE, self.now().timestamp())
        except SignatureError as exc:
            raise AuthFailed(str(exc)) from None
        try:
            await self.check_hotkey(hotkey)
        except (Unauthenticated, PermissionDenied) as exc:
            raise AuthFailed(exc.message) from None
        return hotkey


@dataclass
class _Session:
    """One Socket.IO session: unauthenticated (a timer runs) or a hotkey's (a forwarder runs)."""

    sid: str
    hotkey: str | None = None
    task: asyncio.Task | None = None

    def stop(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None


class MinerSockets:
    """Session <-> hotkey bookkeeping and the per-session forwarder; registers its handlers on `sio`.

    `hub()` returns the running EventHub (rt.events); `open_jobs()` yields the job_created events to replay;
    `drop(sid)` ends a session's transport so the client reconnects (default: `sio.disconnect`)."""

    def __init__(self, sio: Transport, hub: Callable[[], Any], authenticator: SocketAuthenticator,
                 open_jobs: Callable[[], AsyncIterator[Any]], *, auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
                 drop: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.sio = sio
        self.hub = hub
        self.authenticator = authenticator
        self.open_jobs = open_jobs
        self.auth_timeout = auth_timeout
        self._drop = drop or sio.disconnect
        self._sessions: dict[str, _Session] = {}
        self._by_hotkey: dict[str, set[str]] = {}
        on = getattr(sio, "on", None)
        if on is not None:
            on("connect", self.on_connect)
            on("authenticate", self.on_authenticate)
            on("disconnect", self.on_disconnect)

    @classmethod
    def for_runtime(cls, sio, runtime: Callable[[], Any], check_hotkey: Callable[[str], Awaitable[Any]], **kw
                    ) -> "MinerSockets":
        """Wired to the app's Runtime (`runtime()`; read per call, the app builds it at start): hub rt.events,
        clock rt.clock, open jobs from PostgreSQL, transports dropped with `drop_transport`. `check_hotkey` is
        the auth interceptor's metagraph check."""
        kw.setdefault("drop", lambda sid: drop_transport(sio, sid))
        return cls(sio, lambda: runtime().events, SocketAuthenticator(lambda: runtime().clock.now(), check_hotkey),
                   lambda: open_job_events(runtime().engine), **kw)

    # -- introspection -------------------------------------------------------------------------------------------
    def sessions_of(self, hotkey: str) -> frozenset[str]:
        """The authenticated sessions of a hotkey (each gets every event for it)."""
        return frozenset(self._by_hotkey.get(hotkey, ()))

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    # -- handlers ------------------------------------------------------------------------------------------------
    async def on_connect(self, sid: str, environ: dict | None = None, auth: Any = None) -> bool:
        session = self._sessions[sid] = _Session(sid)
        session.task = asyncio.create_task(self._expire(sid), name=f"socketio-auth-timeout-{sid}")
        return True

    async def on_authenticate(self, sid: str, data: Any = None) -> None:
        session = self._sessions.get(sid)
        if session is None:  # disconnected meanwhile
            return
        try:
            hotkey = await self.authenticator.authenticate(data)
        except AuthFailed as exc:
            log.info("socket.io auth refused", extra={"sid": sid, "error": str(exc)})
            await self.sio.emit("auth_failed", {"error": str(exc)}, to=sid)
            await self._drop_session(sid, self.sio.disconnect)
            return
        except Exception:  # e.g. PostgreSQL unreachable: not the miner's fault, so let it reconnect and retry
            log.exception("socket.io auth could not be checked", extra={"sid": sid})
            await self.sio.emit("auth_failed", {"error": "authentication is unavailable right now; reconnect "
                                                         "and authenticate again"}, to=sid)
            await self._drop_session(sid, self._drop)
            return
        if self._sessions.get(sid) is not session:  # disconnected while we checked the metagraph
            return
        self._forget_hotkey(session)
        session.stop()
        session.hotkey = hotkey
        self._by_hotkey.setdefault(hotkey, set()).add(sid)
        session.task = asyncio.create_task(self._forward(session, hotkey), name=f"socketio-forward-{sid}")

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            self._forget_hotkey(session)
            session.stop()

    async def close(self) -> None:
        """Drop every session's transport (the process is stopping; clients reconnect, maybe elsewhere)."""
        for sid in list(self._sessions):
            await self._drop_session(sid, self._drop)

    # -- internals -----------------------------------------------------------------------------------------------
    async def _expire(self, sid: str) -> None:
        await asyncio.sleep(self.auth_timeout)
        session = self._sessions.get(sid)
        if session is not None and session.hotkey is None:
            log.info("socket.io session did not authenticate in time", extra={"sid": sid})
            await self._drop_session(sid, self.sio.disconnect)

    async def _forward(self, session: _Session, hotkey: str) -> None:
        sid = session.sid
        try:
            async with self.hub().subscribe(hotkey) as subscription:  # from here on nothing live is missed
                await self.sio.emit("auth_success", AUTH_SUCCESS, to=sid)
                replayed = set()
                async for event in self.open_jobs():
                    replayed.add(event.data["job_id"])
                    await self.sio.emit(BROADCAST, broadcast_payload(event), to=sid)
                while (event := await subscription.next(0)) is not None:  # what arrived during the replay
                    if event.reason != "job_created" or event.data.get("job_id") not in replayed:
                        await self.sio.emit(BROADCAST, broadcast_payload(event), to=sid)
                async for event in subscription:  # ends when the hub closes
                    await self.sio.emit(BROADCAST, broadcast_payload(event), to=sid)
        except asyncio.CancelledError:
            raise
        except HubClosed:
            pass
        except SubscriberTooSlow:
            log.warning("socket.io session fell behind the event hub; dropping it", extra={"sid": sid})
        except Exception:
            log.exception("socket.io forwarder failed; dropping the session", extra={"sid": sid})
        if self._sessions.get(sid) is session:
            await self._drop_session(sid, self._drop)

    async def _drop_session(self, sid: str, how: Callable[[str], Awaitable[None]]) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            self._forget_hotkey(session)
            session.stop()
        try:
            await how(sid)
        except Exception:  # already gone
            log.debug("socket.io session %s was already gone", sid, exc_info=True)

    def _forget_hotkey(self, session: _Session) -> None:
        if session.hotkey is None:
            return
        sids = self._by_hotkey.get(session.hotkey)
        if sids is not None:
            sids.discard(session.sid)
            if not sids:
                del self._by_hotkey[session.hotkey]
        session.hotkey = None


async def open_job_events(engine) -> AsyncIterator[Any]:
    """job_created for every open, unassigned job, oldest first (what a miner that just connected missed)."""
    fetch = lambda repo, after, limit: repo.available_jobs_page(after, limit)  # noqa: E731
    async for page in keyset_pages(engine, fetch, key=lambda row: row.key, repository=MinerRepository):
        for job, chute in page:
            yield job_created_event(job, chute)


async def drop_transport(sio, sid: str) -> None:
    """End a session's Engine.IO transport without a close packet. python-socketio's client treats that as a lost
    connection and reconnects (after a Socket.IO disconnect or an Engine.IO close it would stop for good)."""
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    socket = sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
    if socket is None:
        return
    await socket.close(wait=False, abort=True)
    await socket.queue.put(None)  # wakes the websocket writer, which then closes the connection
