"""The resilient HTTP layer every real provider adapter calls through (one piece of code per idea).

One `ProviderHttp` per adapter instance: an httpx.AsyncClient plus, per attempt, in this order

    circuit breaker -> token bucket -> request (per-operation timeout) -> classify -> parse

The token bucket is the account's: kept in Redis and shared by every replica once wiring calls share_rate_limit
(SharedTokenBucket), else this process's own (TokenBucket, also the fallback while Redis does not answer).

Failure model (what reaches the caller is always a ProviderError, never an httpx exception)::

    transport error / timeout ........ TRANSIENT
    provider classifier (body rules) . whatever the adapter says (Vast no_such_ask -> STALE_INVENTORY, ...)
    401 / 403 ........................ AUTH
    404 / 410 ........................ GONE     (unless the call lists it in `ok`: get/destroy read 404 as an answer)
    408 / 425 / 429 / 5xx ............ TRANSIENT
    other non-2xx .................... INVALID
    parse() raising BadReply ......... its kind (a 200 whose body is not what the operation promises)

Retries: a TRANSIENT attempt is retried after `policy.backoff[i]` seconds when the request is safe to repeat,
that is when the operation is idempotent, or when the provider provably did not act on it (429, or the
connection was never made). A non-idempotent create is therefore never repeated after a 5xx or a read timeout,
which could rent a second instance.

Metrics (broker/metrics.py), the counting rule in one place:
  - gpu_provider_api_calls_total{status}: one per HTTP attempt (success | error), plus one `circuit_open` per
    call the breaker refused without sending anything;
  - gpu_provider_api_response_time_seconds: one per HTTP attempt sent;
  - gpu_provider_api_errors_total: exactly once per *operation* that ends in a ProviderError, however many
    attempts it took (a 429 retried into a success counts zero errors);
  - gpu_provider_circuit_breaker_state: 0 closed, 1 open, 2 half-open, set on every transition.

The breaker counts every TRANSIENT attempt (429, 5xx, transport errors, timeouts, unreadable bodies): the provider
is overloaded or down. Client errors (4xx) prove the provider is up and never count. Cancellation is not a
failure. Secrets (API keys, tokens, TensorDock's query-string credentials) are removed from every message we build,
and httpx's own request log line gets credential query parameters masked.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Awaitable, Callable, Collection, Iterable, Mapping, TypeVar

import httpx

from .. import tracing
from ..broker.metrics import CIRCUIT_STATE, PROVIDER_API_CALLS, PROVIDER_API_ERRORS, PROVIDER_API_SECONDS
from ..clock import Clock, SystemClock
from .base import ErrorKind, ProviderError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

REDACTED = "[redacted]"
# Query parameters that carry credentials on some provider (TensorDock /locations); masked in httpx's log lines.
CREDENTIAL_PARAMS = frozenset({"api_key", "api_token", "token", "key", "apikey", "access_token"})
_DETAIL_LIMIT = 500  # characters of a provider body kept in an error message


@dataclass(frozen=True)
class HttpPolicy:
    """Rate, retry and breaker settings of one provider account (the provider's limits are per account)."""

    rate_per_second: float
    burst: int
    backoff: tuple[float, ...]  # delay before each retry; len(backoff) retries, then the error stands
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0


@dataclass(frozen=True)
class Operation:
    """One kind of provider call: its metric label, its time budget, whether repeating it is harmless."""

    name: str  # metric label: ListOffers, CreateInstance, GetInstanceStatus, ...
    timeout: float
    idempotent: bool = True


@dataclass(frozen=True)
class Reply:
    status: int
    text: str

    @cached_property
    def data(self) -> Any:
        """The body as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.text) if self.text else None
        except ValueError:
            return None


class BadReply(Exception):
    """Raised by a classifier-approved reply's parser: the body is not what the operation promises."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


Classifier = Callable[[Reply], "ErrorKind | None"]


def status_kind(status: int) -> ErrorKind | None:
    """The generic status rule (None for 2xx)."""
    if 200 <= status < 300:
        return None
    if status in (401, 403):
        return ErrorKind.AUTH
    if status in (404, 410):
        return ErrorKind.GONE
    if status in (408, 425, 429) or status >= 500:
        return ErrorKind.TRANSIENT
    return ErrorKind.INVALID


def body_snippet(reply: Reply) -> str:
    text = " ".join(reply.text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "..."


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked. Waiters reserve in arrival order (the balance may go
    negative), so concurrent callers are spread out instead of all waking at once."""

    def __init__(self, rate: float, burst: int, *, clock: Clock, sleep: Sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._last = self._now()

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def reserve(self) -> float:
        """Take a token; returns how long the caller must wait before using it."""
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)


# One account's bucket in Redis: the TokenBucket arithmetic, run atomically where every replica sees it. ARGV: rate,
# burst, now (seconds); returns the wait as a string (Lua numbers would be truncated to integers). The key expires
# once the bucket would have refilled anyway, so an idle account leaves nothing behind.
_SHARED_BUCKET_LUA = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(last))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 60000)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""


class SharedTokenBucket:
    """The TokenBucket of one provider account kept in Redis, so N replicas together send the account's rate,
    not N times it. Same semantics (rate, burst, waiters reserve in arrival order, across replicas too).

    A replica's clock running behind never refills the bucket twice (`last` only moves forward). When Redis does
    not answer, the replica falls back to its own in-process bucket (logged once per outage): provider calls
    include the destroys that stop billing, and they must not wait on Redis; meanwhile the fleet may exceed the
    account's rate by up to N times, which the provider answers with 429s that are retried with backoff.
    """

    REDIS_TIMEOUT = 1.0  # seconds one bucket operation may take before this call uses the local bucket
    RETRY_SECONDS = 10.0  # after a failure, Redis is tried again only this much later (no 1 s stall per call)

    def __init__(self, redis, key: str, fallback: TokenBucket, *, sleep: Sleep) -> None:
        self.key = key
        self.rate, self.burst = fallback.rate, fallback.burst
        self.fallback = fallback
        self._script = redis.register_script(_SHARED_BUCKET_LUA)
        self._sleep = sleep
        self._degraded = False
        self._retry_at = 0.0

    async def reserve(self) -> float:
        now = self.fallback._now()
        if self._degraded and now < self._retry_at:
            return self.fallback.reserve()
        try:
            async with asyncio.timeout(self.REDIS_TIMEOUT):
                wait = float(await self._script(keys=[self.key], args=[repr(self.rate), self.burst, repr(now)]))
        except Exception as exc:  # any Redis failure: connection refused, no answer in time, script error
            if not self._degraded:
                log.warning("shared provider rate limit unavailable, using this process's own bucket",
                            extra={"key": self.key, "error": f"{type(exc).__name__}: {exc}"})
            self._degraded, self._retry_at = True, now + self.RETRY_SECONDS
            return self.fallback.reserve()
        if self._degraded:
            log.info("shared provider rate limit back", extra={"key": self.key})
            self._degraded = False
        return wait

    async def acquire(self) -> None:
        wait = await self.reserve()
        if wait > 0:
            await self._sleep(wait)


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Closed -> `failures` TRANSIENT failures without a success in between -> open (fail fast) -> after
    `reset_seconds` half-open: one probe call goes through; its success closes, its failure reopens."""

    def __init__(self, provider: str, *, failures: int, reset_seconds: float, clock: Clock) -> None:
        self.provider = provider
        self.threshold, self.reset_seconds = failures, reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probing = False
        CIRCUIT_STATE.labels(provider).set(0)

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._now() - self._opened_at >= self.reset_seconds:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            log.warning("provider circuit breaker %s", state.name.lower().replace("_", "-"),
                        extra={"provider": self.provider})
        self._state = state
        CIRCUIT_STATE.labels(self.provider).set(int(state))

    def admit(self) -> str | None:
        """None when a call may go out (taking the probe slot when half-open), else why not."""
        state = self.state
        if state is BreakerState.CLOSED:
            return None
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return None
        if state is BreakerState.HALF_OPEN:
            return "circuit breaker half-open: a probe call is in flight"
        retry_in = max(0.0, self.reset_seconds - (self._now() - self._opened_at))
        return f"circuit breaker open: retry in {retry_in:.0f}s"

    def release(self) -> None:
        """The admitted call ended without a verdict (cancelled, or a non-transient error during a probe)."""
        self._probing = False

    def success(self) -> None:
        self._probing = False
        self._failures = 0
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at = self._now()
            self._set(BreakerState.OPEN)


class _Redactor:
    def __init__(self, secrets: Iterable[str | None]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


class _MaskCredentialParams(logging.Filter):
    """httpx logs every request URL at INFO; TensorDock's credentials live in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(mask_url(a) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def mask_url(url: httpx.URL) -> httpx.URL:
    for key in CREDENTIAL_PARAMS & set(url.params.keys()):
        url = url.copy_set_param(key, REDACTED)
    return url


_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, _MaskCredentialParams) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(_MaskCredentialParams())


class ProviderHttp:
    """The client one adapter instance talks through. See the module docstring for the failure model.

    >>> http = ProviderHttp("vastai", "https://console.vast.ai/api/v0", policy=HttpPolicy(1, 2, (1, 2, 4)),
    ...                     headers={"Authorization": f"Bearer {key}"}, secrets=[key])   # doctest: +SKIP
    >>> offers = await http.call(Operation("ListOffers", 30), "GET", "/bundles/", params={"q": q},
    ...                          parse=lambda r: r.data["offers"])                       # doctest: +SKIP
    """

    def __init__(self, provider: str, base_url: str, *, policy: HttpPolicy,
                 headers: Mapping[str, str] | None = None, secrets: Iterable[str | None] = (),
                 classify: Classifier | None = None, clock: Clock | None = None, sleep: Sleep | None = None) -> None:
        secrets = list(secrets)
        self.provider = provider
        self.policy = policy
        self._clock = clock or SystemClock()
        self._sleep = sleep or asyncio.sleep
        self._classify = classify
        self._redact = _Redactor(secrets)
        self.bucket = TokenBucket(policy.rate_per_second, policy.burst, clock=self._clock, sleep=self._sleep)
        self.breaker = CircuitBreaker(provider, failures=policy.breaker_failures,
                                      reset_seconds=policy.breaker_reset_seconds, clock=self._clock)
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"),
                                         headers={"Accept": "application/json", **(headers or {})})
        tracing.instrument_httpx(self._client, mask_url)  # a span per HTTP attempt, when tracing is on
        # The provider's limits are per account: name the account by its credentials (hashed, never stored).
        self.account = hashlib.sha256("\0".join(sorted(s for s in secrets if s)).encode()).hexdigest()[:16]

    def share_rate_limit(self, redis) -> None:
        """Draw from the account's bucket in Redis, shared with every replica (and deployment) using the account."""
        if not isinstance(self.bucket, SharedTokenBucket):
            self.bucket = SharedTokenBucket(redis, f"gantry:provider-rate:{self.provider}:{self.account}",
                                            self.bucket, sleep=self._sleep)

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    async def aclose(self) -> None:
        await self._client.aclose()

    def error(self, kind: ErrorKind, operation: str, detail: str, status: int | None = None) -> ProviderError:
        """A ProviderError with secrets removed; for adapter-side checks made before any request."""
        return ProviderError(kind, self.provider, operation, self._redact(detail), status=status)

    async def call(self, op: Operation, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                   json_body: Any = None, headers: Mapping[str, str] | None = None, ok: Collection[int] = (),
                   classify: Classifier | None = None, parse: Callable[[Reply], T] | None = None) -> T | Reply:
        """One operation: attempts until success, a non-retryable error or the end of the backoff schedule.

        `ok`: non-2xx statuses that are answers, not failures (404 for get/destroy). `classify`: body rules of
        this call (else the client's). `parse`: turns the reply into the result inside the attempt, so a
        malformed body is a failed attempt (counted, retried if safe) like any other.
        """
        classify = classify or self._classify
        attempt = 0
        while True:
            refusal = self.breaker.admit()
            if refusal is not None:
                PROVIDER_API_CALLS.labels(self.provider, op.name, "circuit_open").inc()
                raise self._failed(op, ErrorKind.TRANSIENT, refusal, None)
            try:
                result, failure = await self._attempt(op, method, path, params, json_body, headers, ok,
                                                      classify, parse)
            except BaseException:
                self.breaker.release()
                raise
            if failure is None:
                PROVIDER_API_CALLS.labels(self.provider, op.name, "success").inc()
                self.breaker.success()
                return result
            kind, detail, status, sent = failure
            PROVIDER_API_CALLS.labels(self.provider, op.name, "error").inc()
            if kind is ErrorKind.TRANSIENT:
                self.breaker.failure()
            else:
                self.breaker.release()
            safe = op.idempotent or status == 429 or not sent
            if kind is ErrorKind.TRANSIENT and safe and attempt < len(self.policy.backoff):
                delay = self.policy.backoff[attempt]
                attempt += 1
                log.info("provider call failed, retrying", extra={
                    "provider": self.provider, "operation": op.name, "status": status, "attempt": attempt,
                    "retry_in_seconds": delay, "error": self._redact(detail)})
                await self._sleep(delay)
                continue
            raise self._failed(op, kind, detail, status)

    async def _attempt(self, op, method, path, params, json_body, headers, ok, classify, parse):
        """(result, None) or (None, (kind, detail, status, request_sent))."""
        await self.bucket.acquire()
        started = time.perf_counter()
        try:
            response = await self._client.request(method, path, params=params, json=json_body, headers=headers,
                                                  timeout=op.timeout)
            text = response.text
        except httpx.TimeoutException as exc:
            sent = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
            return None, (ErrorKind.TRANSIENT, f"timed out after {op.timeout:g}s ({type(exc).__name__})", None, sent)
        except httpx.TransportError as exc:
            sent = not isinstance(exc, httpx.ConnectError)
            return None, (ErrorKind.TRANSIENT, f"{type(exc).__name__}: {exc}", None, sent)
        finally:
            PROVIDER_API_SECONDS.labels(self.provider, op.name).observe(time.perf_counter() - started)
        reply = Reply(response.status_code, text)
        kind = classify(reply) if classify is not None else None
        if kind is None and reply.status not in ok:
            kind = status_kind(reply.status)
        if kind is not None:
            return None, (kind, f"HTTP {reply.status}: {body_snippet(reply)}", reply.status, True)
        if parse is None:
            return reply, None
        try:
            return parse(reply), None
        except BadReply as exc:
            return None, (exc.kind, f"HTTP {reply.status}: {exc.detail}", reply.status, True)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return None, (ErrorKind.TRANSIENT, f"HTTP {reply.status}: unexpected body ({type(exc).__name__}: "
                                               f"{exc}): {body_snippet(reply)}", reply.status, True)

    def _failed(self, op: Operation, kind: ErrorKind, detail: str, status: int | None) -> ProviderError:
        PROVIDER_API_ERRORS.labels(self.provider, op.name).inc()
        err = self.error(kind, op.name, detail, status)
        log.warning("provider call failed", extra={"provider": self.provider, "operation": op.name,
                                                   "kind": kind.value, "status": status, "error": err.detail})
        return err


def check_instance_id(http: ProviderHttp, operation: str, instance_id: str) -> str:
    """An id we are about to put in a URL path: non-empty, <= 128 chars, no path separators, raw or encoded."""
    lowered = (instance_id or "").lower()
    if (not instance_id or len(instance_id) > 128 or "/" in lowered or "\\" in lowered
            or "%2f" in lowered or "%5c" in lowered or any(c.isspace() for c in lowered)):
        raise http.error(ErrorKind.INVALID, operation, f"invalid instance id {instance_id[:140]!r}")
    return instance_id
