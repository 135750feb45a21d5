"""Legacy behaviour as data: API family per path prefix, success status and special rendering per RPC.

Nothing here is code that runs per endpoint; `app.py` reads these tables. A new legacy quirk is a new row.
"""
from __future__ import annotations

from dataclasses import dataclass

BROKER = "broker"  # gin: {"error": msg, "request_id": id, ...structured fields}
VALIDATOR = "validator"  # FastAPI: {"detail": msg} and 422 {"detail": [{"loc", "msg", "type"}]}

# Longest matching prefix wins; Gantry's own /admin/v1/ uses the broker-style body.
FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/api/v1/", BROKER),
    ("/admin/v1/", BROKER),
    ("/health", BROKER),
    ("/ready", BROKER),
    ("/metrics", BROKER),
    ("/openapi.json", BROKER),
    ("/instances", VALIDATOR),
    ("/servers", VALIDATOR),
    ("/miner", VALIDATOR),
    ("/chutes", VALIDATOR),
    ("/nodes", VALIDATOR),
)
DEFAULT_FAMILY = BROKER


_FAMILY_OF: dict[str, str] = {}  # per path seen; cleared when large (paths carry ids)


def family_of(path: str) -> str:
    found = _FAMILY_OF.get(path)
    if found is not None:
        return found
    best, best_len = DEFAULT_FAMILY, -1
    for prefix, family in FAMILY_PREFIXES:
        if path.startswith(prefix) and len(prefix) > best_len:
            best, best_len = family, len(prefix)
    if len(_FAMILY_OF) >= 4096:
        _FAMILY_OF.clear()
    _FAMILY_OF[path] = best
    return best


# Success status per RPC (full name); everything else answers 200.
SUCCESS_STATUS: dict[str, int] = {
    "gantry.servers.v1.ServerService.CreateServer": 201,
    "gantry.broker.v1.SessionService.CreateSession": 201,
    "gantry.instances.v1.InstanceService.CreateInstance": 202,
}

# Unary renderings other than JSON of the message (or of its response_body field).
TEXT = "text"  # the response_body string field as text/plain
RAW = "raw"  # a (content_type, body) pair of fields written as they are
JSON = "json"  # default


@dataclass(frozen=True)
class Unary:
    kind: str = JSON
    content_type_field: str = ""  # RAW: field holding the content type
    body_field: str = ""  # RAW: field holding the bytes
    # (field, value) -> HTTP status: the legacy 503 of /health and /ready is a successful RPC.
    status_when: tuple[tuple[str, object, int], ...] = ()
    # One message, two legacy bodies: (optional field, keys kept when it is set, keys kept when it is not).
    keys_by_presence: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None


UNARY: dict[str, Unary] = {
    "gantry.instances.v1.InstanceService.GetRintNonce": Unary(TEXT),
    "gantry.ops.v1.OpsService.GetMetrics": Unary(RAW, content_type_field="content_type", body_field="body"),
    "gantry.ops.v1.OpsService.GetHealth": Unary(status_when=(("status", "unavailable", 503),)),
    "gantry.ops.v1.OpsService.GetReady": Unary(status_when=(("ready", False, 503),)),
    "gantry.broker.v1.CostService.GetCosts": Unary(keys_by_presence=(
        "session_id", ("session_id", "total_cost", "currency"),
        ("consumer_id", "total_cost", "session_count", "hours_used", "by_provider", "by_gpu_type", "period_start",
         "period_end", "currency"))),
    # GetInstanceNonce (bare JSON string) and ReleaseJob (JSON null) need no row: response_body does it.
}

# Reads whose service hands back one shared message per snapshot (services/inventory.py): the gateway renders
# each such message once, keeps the bytes with an ETag, and answers `If-None-Match` with 304.
CACHED_READS: frozenset[str] = frozenset({
    "gantry.broker.v1.InventoryService.ListOffers",
    "gantry.broker.v1.InventoryService.GetOffer",
})

# Server-streaming framings.
SSE_ROWS = "sse_rows"  # data: {json}\n\n per row (miner lists)
SSE_LOG = "sse_log"  # data: {"log": "..."}\n\n
SSE_RAW = "sse_raw"  # text/event-stream of each message's `raw` bytes unchanged (StreamLogs relays upstream SSE)
CSV = "csv"  # bytes chunks concatenated, text/csv attachment
NDJSON = "ndjson"  # one JSON value per line (default)
SSE_EVENTS = "sse_events"  # id: <id_field>\ndata: {json}\n\n; a keep-alive message as a `: keep-alive` comment


@dataclass(frozen=True)
class Stream:
    framing: str = NDJSON
    filename: str = ""  # CSV attachment name
    # explicit_null: request field that asks for `data: NO_ITEMS\n` when the stream is empty.
    empty_marker_field: str = ""
    # A request that accepts text/event-stream gets SSE_EVENTS instead of `framing`.
    sse_on_accept: bool = False
    id_field: str = ""  # SSE_EVENTS: the `id:` of each event
    # A message with this bool field set is a keep-alive: `: keep-alive` in SSE, {"<field>": true} in NDJSON.
    keepalive_field: str = ""


_MINER = "gantry.miner.v1.MinerService."
STREAMS: dict[str, Stream] = {
    _MINER + "ListChutes": Stream(SSE_ROWS),
    _MINER + "ListImages": Stream(SSE_ROWS),
    _MINER + "ListNodes": Stream(SSE_ROWS),
    _MINER + "ListInstances": Stream(SSE_ROWS, empty_marker_field="explicit_null"),
    _MINER + "ListAvailableJobs": Stream(SSE_ROWS),
    _MINER + "GetMetrics": Stream(SSE_ROWS),
    _MINER + "WatchEvents": Stream(NDJSON, sse_on_accept=True, id_field="cursor", keepalive_field="heartbeat"),
    "gantry.instances.v1.InstanceService.StreamLogs": Stream(SSE_RAW),
    "gantry.instances.v1.InstanceService.StreamStartupLogs": Stream(SSE_RAW),
    "gantry.instances.v1.InstanceService.GetInstanceReconciliationCsv": Stream(CSV, "audit-reconciliation.csv"),
    "gantry.instances.v1.InstanceService.GetInstanceComputeHistoryCsv": Stream(CSV, "compute-history.csv"),
}

NO_ITEMS = b"data: NO_ITEMS\n"
