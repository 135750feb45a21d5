"""Settings every bench server runs with: load from one client on loopback is the point of a bench, so the
per-caller request limits and stream caps (docs/security.md) are lifted, and the admin token is strong enough
for `gantry serve`'s start-up check. Production keeps the defaults."""
from __future__ import annotations

from gantry_server.config import DEFAULT_RATE_LIMITS

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef0123456789abcdef"
BENCH_ENV = {
    "GANTRY_ADMIN_TOKEN": ADMIN_TOKEN,
    "GANTRY_RATE_LIMITS": ",".join(f"{bucket}=off" for bucket in DEFAULT_RATE_LIMITS),
    "GANTRY_STREAMS_PER_CALLER": "100000",
    "GANTRY_STREAMS_PER_PROCESS": "100000",
    "GANTRY_WORKERS": "1",  # one server process, as the figures in docs/performance.md; bench/run.py --workers N
}
