"""SessionService: the consumer's view of GPU sessions (seed 004), over broker.sessions.SessionManager."""
from __future__ import annotations

import asyncio
import base64
import contextlib
from datetime import datetime, timedelta, timezone

from gantry.broker.v1 import sessions_pb2, sessions_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..broker.consumers import owner_of_call
from ..broker.sessions import STATUSES
from .. import metadata_keys
from ..domain.validation import Violations
from ..errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ..runtime import Runtime
from ..store import redis_keys
from ..store.models import TERMINAL_SESSION_STATUSES

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
UNPAGED_MAX_ROWS = 5000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    # Timestamp.FromDatetime is Python code (~3 µs); this is the same value (stored datetimes are aware).
    return Timestamp(seconds=(value - _EPOCH) // _SECOND, nanos=value.microsecond * 1000)


_OPTIONAL = ("error", "api_endpoint", "api_port", "model_id", "template_hash_id", "template_name", "disk_gb",
             "retry_parent_id", "retry_child_id", "failed_offers")


def session_proto(row) -> sessions_pb2.Session:
    """Every stored field the client may see; never the keys, the offer id or the provider instance id. `row`:
    a SQLAlchemy Row or a mapping with (at least) repo.LIST_COLUMNS."""
    m = getattr(row, "_mapping", row)
    s = sessions_pb2.Session(
        id=m["id"], consumer_id=m["consumer_id"], provider=m["provider"], gpu_type=m["gpu_type"],
        gpu_count=m["gpu_count"], status=m["status"], workload_type=m["workload_type"],
        reservation_hours=m["reservation_hours"], price_per_hour=m["price_per_hour"],
        created_at=_ts(m["created_at"]), expires_at=_ts(m["expires_at"]), stopped_at=_ts(m["stopped_at"]),
        idle_threshold_minutes=m["idle_threshold_minutes"], storage_policy=m["storage_policy"],
        launch_mode=m["launch_mode"], ssh_host=m["ssh_host"] or "", ssh_port=m["ssh_port"] or 22,
        ssh_user=m["ssh_user"] or "",
    )
    for name in _OPTIONAL:
        value = m[name]
        if value is not None:
            setattr(s, name, value)
    if m["auto_retry"]:
        s.auto_retry = True
        s.retry_count = m["retry_count"]
    return s


def _duration(delta: timedelta) -> str:
    minutes = max(int(delta.total_seconds() // 60), 0)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def _cursor(row) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


def _parse_cursor(token: str) -> tuple[datetime, str]:
    try:
        created, sid = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), sid
    except Exception:
        raise InvalidArgument.field("page_token", "is not a token returned by this API") from None


class SessionService(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @property
    def sessions(self):
        if self.rt.sessions is None:
            raise FailedPrecondition("the broker is not running on this server", http_status=503)
        return self.rt.sessions

    def _owner(self, consumer_id: str = "") -> str | None:
        return owner_of_call(consumer_id, required=self.rt.settings.broker.auth_required)

    async def CreateSession(self, request, context):
        if (owner := self._owner(request.consumer_id)) is not None:
            request.consumer_id = owner  # the idempotency record is then the caller's alone
        if not request.request_id:  # REST clients send the idempotency key as a header
            key = dict(context.invocation_metadata() or ()).get(metadata_keys.IDEMPOTENCY_KEY, "")
            if not isinstance(key, str) or not all(" " <= c <= "~" for c in key):  # never dropped silently
                raise InvalidArgument.field(metadata_keys.IDEMPOTENCY_KEY, "must be printable ASCII")
            request.request_id = key.strip()
        row, private_key = await self.sessions.create(request)
        response = sessions_pb2.CreateSessionResponse(session=session_proto(row), ssh_private_key=private_key)
        if row.retry_count:
            response.retries_attempted = row.retry_count
        return response

    async def ListSessions(self, request, context):
        v = Violations()
        v.require(not request.status or request.status in STATUSES, "status", f"must be one of {', '.join(STATUSES)}")
        v.require(request.page_size >= 0, "page_size", "must be non-negative")
        v.raise_if_any()
        owner = self._owner(request.consumer_id)
        paged = bool(request.page_size or request.page_token)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE) if paged else None
        # Unpaged (legacy) lists are capped too: "no limit" is at most UNPAGED_MAX_ROWS rows (page for more).
        limit = min(request.limit, UNPAGED_MAX_ROWS) if request.limit > 0 else UNPAGED_MAX_ROWS
        if size is not None:
            limit = min(size, limit) if limit else size
        before = _parse_cursor(request.page_token) if request.page_token else None
        rows = await self.sessions.list(consumer_id=owner or request.consumer_id, status=request.status,
                                        provider=request.provider, limit=(limit + 1) if paged else limit,
                                        before=before)
        next_token = ""
        if paged and len(rows) > limit:
            rows = rows[:limit]
            next_token = _cursor(rows[-1])
        return sessions_pb2.ListSessionsResponse(sessions=[session_proto(r) for r in rows], count=len(rows),
                                                 next_page_token=next_token)

    async def GetSession(self, request, context):
        _require_id(request.id)
        row = await self.sessions.get(request.id, owner=self._owner())
        return sessions_pb2.GetSessionResponse(session=session_proto(row))

    async def GetSessionDiagnostics(self, request, context):
        _require_id(request.id)
        row = await self.sessions.get(request.id, owner=self._owner())
        if row.status != "running":
            raise FailedPrecondition(f"session is not running; current status: {row.status}",
                                     reason="SESSION_NOT_RUNNING")
        now = self.rt.clock.now()
        left = row.expires_at - now
        return sessions_pb2.GetSessionDiagnosticsResponse(
            session_id=row.id, status=row.status, provider=row.provider, gpu_type=row.gpu_type,
            gpu_count=row.gpu_count, ssh_host=row.ssh_host or "", ssh_port=row.ssh_port or 22,
            ssh_user=row.ssh_user or "", launch_mode=row.launch_mode, api_endpoint=row.api_endpoint or "",
            created_at=_ts(row.created_at), expires_at=_ts(row.expires_at),
            uptime=_duration(now - (row.running_at or row.created_at)),
            time_to_expiry=_duration(left) if left.total_seconds() > 0 else "expired",
            ssh_available=bool(row.ssh_host), note="Full SSH diagnostics require client-side SSH access.")

    async def DoneSession(self, request, context):
        _require_id(request.id)
        row = await self.sessions.done(request.id, owner=self._owner())
        return sessions_pb2.DoneSessionResponse(message="session shutdown initiated", session_id=row.id)

    async def ExtendSession(self, request, context):
        _require_id(request.id)
        row = await self.sessions.extend(request.id, request.additional_hours, owner=self._owner())
        return sessions_pb2.ExtendSessionResponse(message="session extended", session_id=row.id,
                                                  new_expires_at=_ts(row.expires_at))

    async def DestroySession(self, request, context):
        _require_id(request.id)
        row = await self.sessions.destroy(request.id, owner=self._owner())
        return sessions_pb2.DestroySessionResponse(message="session destroyed" if row.status != "stopping"
                                                   else "session destruction in progress", session_id=row.id)

    async def WatchSession(self, request, context):
        """The current state, then one message per change (woken by Redis pub/sub, checked every few seconds
        in case a message was lost); ends after a terminal status."""
        _require_id(request.id)
        owner = self._owner()
        after = 0
        if request.cursor:
            if not request.cursor.isdigit():
                raise InvalidArgument.field("cursor", "must be a cursor returned by WatchSession")
            after = int(request.cursor)
        pubsub = self.rt.redis.pubsub()
        await pubsub.subscribe(redis_keys.session_changes(request.id))
        try:
            row = await self.sessions.get(request.id, owner=owner)
            while True:
                if row.version > after:
                    after = row.version
                    yield sessions_pb2.WatchSessionResponse(cursor=str(row.version), session=session_proto(row))
                if row.status in TERMINAL_SESSION_STATUSES:
                    return
                if not await _until_stopping(pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0),
                                             self.rt.state.stopping):
                    raise Unavailable(f"the server is shutting down; watch again with cursor {after}",
                                      reason="SHUTTING_DOWN", metadata={"cursor": str(after)},
                                      retry_after_seconds=1)
                row = await self.sessions.get(request.id, owner=owner)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone (Redis down, cancelled read)
                await pubsub.unsubscribe()
            await pubsub.aclose()


async def _until_stopping(wait, stopping: asyncio.Event) -> bool:
    """Await `wait` unless the process starts stopping first (then False, and `wait` is cancelled)."""
    if stopping.is_set():
        wait.close()
        return False
    waiter = asyncio.ensure_future(wait)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait((waiter, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stop):
            task.cancel()
    if waiter in done:
        waiter.result()  # a Redis error is the call's error
        return True
    return False


def _require_id(session_id: str) -> None:
    if not session_id:
        raise InvalidArgument.field("id", "is required")
    if len(session_id) > 64:
        raise NotFound(f"session not found: {session_id}")
