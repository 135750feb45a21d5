"""The shared provider HTTP layer: rate limit, retries, circuit breaker, classification, metrics, redaction.

Against a real HTTP server on loopback that answers from a script; time is a ManualClock moved by the injected
sleep, so backoff and breaker schedules run instantly and the requested delays are asserted.
"""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from prometheus_client import REGISTRY, generate_latest

from gantry_server.providers.base import ErrorKind, ProviderError
from gantry_server.providers.http import (BreakerState, HttpPolicy, Operation, ProviderHttp, TokenBucket)
from tests.fakes import FakeHttpServer, ManualSleep, Request, Response
from tests.fakes.asgi import AsgiApp

PROVIDER = "unitprov"
FAST = HttpPolicy(rate_per_second=1000.0, burst=1000, backoff=(1.0, 2.0, 4.0))
NO_RETRY = HttpPolicy(rate_per_second=1000.0, burst=1000, backoff=())
READ = Operation("ListOffers", 5.0)
CREATE = Operation("CreateInstance", 5.0, idempotent=False)


class Script:
    """Answers each request with the next scripted Response (then 200 {"ok": true}); counts hits."""

    def __init__(self) -> None:
        self.replies: list[Response] = []
        self.hits = 0
        self.hang = asyncio.Event()
        self.hanging = False
        self.last: Request | None = None

    async def __call__(self, request: Request) -> Response:
        self.hits += 1
        self.last = request
        if self.hanging:
            await self.hang.wait()
        return self.replies.pop(0) if self.replies else Response(200, {"ok": True})

    def then(self, *replies: Response) -> "Script":
        self.replies.extend(replies)
        return self


@pytest.fixture
async def script():
    s = Script()
    server = FakeHttpServer(AsgiApp(s))
    await server.start()
    s.base_url = server.base_url
    yield s
    s.hang.set()
    await server.stop()


@pytest.fixture
async def make(script, clock, sleep):
    clients: list[ProviderHttp] = []

    def build(policy: HttpPolicy = FAST, **kw) -> ProviderHttp:
        c = ProviderHttp(PROVIDER, kw.pop("base_url", script.base_url), policy=policy, clock=clock, sleep=sleep, **kw)
        clients.append(c)
        return c

    yield build
    for c in clients:
        await c.aclose()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": PROVIDER, **labels}) or 0.0


class Counts:
    """Deltas of the provider API metrics of one operation since construction."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        return {"success": metric("gpu_provider_api_calls_total", operation=self.op, status="success"),
                "error": metric("gpu_provider_api_calls_total", operation=self.op, status="error"),
                "circuit_open": metric("gpu_provider_api_calls_total", operation=self.op, status="circuit_open"),
                "errors": metric("gpu_provider_api_errors_total", operation=self.op),
                "timed": metric("gpu_provider_api_response_time_seconds_count", operation=self.op)}

    def delta(self) -> dict[str, float]:
        now = self._now()
        return {k: now[k] - self.start[k] for k in now}


# -- token bucket ------------------------------------------------------------------------------------------------

async def test_bucket_spends_its_burst_then_waits_one_interval_per_call(clock, sleep):
    bucket = TokenBucket(1.0, 2, clock=clock, sleep=sleep)
    for _ in range(5):
        await bucket.acquire()
    assert sleep.take() == [1.0, 1.0, 1.0]


async def test_bucket_refills_with_elapsed_time_up_to_the_burst(clock, sleep):
    bucket = TokenBucket(2.0, 3, clock=clock, sleep=sleep)
    for _ in range(3):
        await bucket.acquire()
    clock.advance(seconds=60)  # refills, but never beyond the burst of 3
    for _ in range(4):
        await bucket.acquire()
    assert sleep.take() == [0.5]


async def test_concurrent_callers_are_spread_out_not_woken_together(clock):
    sleep = ManualSleep(clock, advance=False)
    bucket = TokenBucket(2.0, 1, clock=clock, sleep=sleep)
    await asyncio.gather(*(bucket.acquire() for _ in range(4)))
    assert sorted(sleep.take()) == [0.5, 1.0, 1.5]


async def test_every_http_attempt_takes_a_token(make, script, sleep):
    http = make(HttpPolicy(rate_per_second=1.0, burst=2, backoff=()))
    for _ in range(4):
        await http.call(READ, "GET", "/x")
    assert script.hits == 4
    assert sleep.take() == [1.0, 1.0]


# -- retries -----------------------------------------------------------------------------------------------------

async def test_429_is_retried_after_1_2_4_seconds_and_a_retried_success_is_no_error(make, script, sleep):
    script.then(*[Response(429, {"msg": "endpoint threshold=4.5*1.0"})] * 3)
    counts = Counts(READ.name)
    reply = await make().call(READ, "GET", "/x")
    assert reply.status == 200 and script.hits == 4
    assert sleep.take() == [1.0, 2.0, 4.0]
    assert counts.delta() == {"success": 1, "error": 3, "circuit_open": 0, "errors": 0, "timed": 4}


async def test_exhausted_retries_fail_once_with_the_last_status(make, script, sleep):
    script.then(*[Response(429, {"msg": "endpoint threshold=4.5*1.0"})] * 4)
    counts = Counts(READ.name)
    with pytest.raises(ProviderError) as err:
        await make().call(READ, "GET", "/x")
    assert err.value.kind is ErrorKind.TRANSIENT and err.value.status == 429
    assert "endpoint threshold=4.5*1.0" in err.value.detail
    assert script.hits == 4 and sleep.take() == [1.0, 2.0, 4.0]
    assert counts.delta()["errors"] == 1 and counts.delta()["error"] == 4


async def test_a_create_is_never_repeated_after_a_5xx(make, script, sleep):
    script.then(Response(502, "bad gateway"))
    with pytest.raises(ProviderError) as err:
        await make().call(CREATE, "PUT", "/asks/1/")
    assert err.value.kind is ErrorKind.TRANSIENT
    assert script.hits == 1 and sleep.take() == []


async def test_a_create_is_repeated_after_429_because_nothing_was_rented(make, script, sleep):
    script.then(Response(429, "slow down"))
    await make().call(CREATE, "PUT", "/asks/1/")
    assert script.hits == 2 and sleep.take() == [1.0]


async def test_refused_connection_is_transient_and_retried_even_for_create(make, sleep):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = make(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as err:
        await http.call(CREATE, "PUT", "/asks/1/")
    assert err.value.kind is ErrorKind.TRANSIENT and "ConnectError" in err.value.detail
    assert sleep.take() == [1.0, 2.0, 4.0]


async def test_a_slow_provider_times_out_as_transient(make, script):
    script.hanging = True
    with pytest.raises(ProviderError) as err:
        await make(NO_RETRY).call(Operation("GetInstanceStatus", 0.1), "GET", "/slow")
    assert err.value.kind is ErrorKind.TRANSIENT and "timed out" in err.value.detail


# -- classification ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status,kind", [
    (400, ErrorKind.INVALID), (401, ErrorKind.AUTH), (403, ErrorKind.AUTH), (404, ErrorKind.GONE),
    (409, ErrorKind.INVALID), (410, ErrorKind.GONE), (422, ErrorKind.INVALID), (408, ErrorKind.TRANSIENT),
    (429, ErrorKind.TRANSIENT), (500, ErrorKind.TRANSIENT), (502, ErrorKind.TRANSIENT), (503, ErrorKind.TRANSIENT),
])
async def test_status_classification(make, script, status, kind):
    script.then(Response(status, {"error": "nope"}))
    with pytest.raises(ProviderError) as err:
        await make(NO_RETRY).call(READ, "GET", "/x")
    assert err.value.kind is kind and err.value.status == status and err.value.provider == PROVIDER


async def test_listed_statuses_are_answers_not_failures(make, script):
    script.then(Response(404, {"error": "not found"}))
    counts = Counts("DestroyInstance")
    reply = await make(NO_RETRY).call(Operation("DestroyInstance", 5), "DELETE", "/i/1", ok=(404,))
    assert reply.status == 404
    assert counts.delta()["success"] == 1 and counts.delta()["errors"] == 0


async def test_a_provider_classifier_overrides_the_status_rule(make, script):
    script.then(Response(400, {"error": "no_such_ask"}))
    http = make(NO_RETRY, classify=lambda r: ErrorKind.STALE_INVENTORY if "no_such_ask" in r.text else None)
    with pytest.raises(ProviderError) as err:
        await http.call(CREATE, "PUT", "/asks/1/")
    assert err.value.kind is ErrorKind.STALE_INVENTORY


async def test_an_unreadable_200_is_a_failed_attempt_and_retried_when_safe(make, script, sleep):
    script.then(Response(200, "<html>maintenance</html>"))
    counts = Counts(READ.name)
    assert await make().call(READ, "GET", "/x", parse=lambda r: r.data["ok"]) is True
    assert script.hits == 2 and sleep.take() == [1.0]
    assert counts.delta()["error"] == 1 and counts.delta()["errors"] == 0


# -- circuit breaker ---------------------------------------------------------------------------------------------

def breaker_gauge() -> float:
    return REGISTRY.get_sample_value("gpu_provider_circuit_breaker_state", {"provider": PROVIDER})


async def fail(http: ProviderHttp, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ProviderError):
            await http.call(READ, "GET", "/x")


async def test_five_transient_failures_open_the_breaker_which_then_fails_fast(make, script):
    http = make(NO_RETRY)
    script.then(*[Response(503, "down")] * 5)
    counts = Counts(READ.name)
    await fail(http, 5)
    assert http.breaker.state is BreakerState.OPEN and breaker_gauge() == 1
    with pytest.raises(ProviderError) as err:
        await http.call(READ, "GET", "/x")
    assert err.value.kind is ErrorKind.TRANSIENT and "circuit breaker open" in err.value.detail
    assert script.hits == 5  # the refused call never reached the provider
    assert counts.delta() == {"success": 0, "error": 5, "circuit_open": 1, "errors": 6, "timed": 5}


async def test_half_open_probe_reopens_on_failure_and_closes_on_success(make, script, clock):
    http = make(NO_RETRY)
    script.then(*[Response(500, "down")] * 6)
    await fail(http, 5)
    clock.advance(seconds=29)
    await fail(http, 1)
    assert script.hits == 5  # still open before 30 s
    clock.advance(seconds=1)
    assert http.breaker.state is BreakerState.HALF_OPEN and breaker_gauge() == 2
    await fail(http, 1)  # the probe fails: open again for another 30 s
    assert script.hits == 6 and http.breaker.state is BreakerState.OPEN and breaker_gauge() == 1
    clock.advance(seconds=30)
    assert (await http.call(READ, "GET", "/x")).status == 200
    assert http.breaker.state is BreakerState.CLOSED and breaker_gauge() == 0


async def test_only_one_probe_at_a_time_and_a_cancelled_probe_frees_the_slot(make, script, clock):
    http = make(NO_RETRY)
    script.then(*[Response(500, "down")] * 5)
    await fail(http, 5)
    clock.advance(seconds=30)
    script.hanging = True
    probe = asyncio.create_task(http.call(READ, "GET", "/x"))
    while script.hits < 6:
        await asyncio.sleep(0.005)
    with pytest.raises(ProviderError) as err:
        await http.call(READ, "GET", "/x")
    assert "probe" in err.value.detail
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    script.hanging = False
    assert (await http.call(READ, "GET", "/x")).status == 200
    assert http.breaker.state is BreakerState.CLOSED


async def test_client_errors_never_open_the_breaker(make, script):
    http = make(NO_RETRY)
    script.then(*[Response(400, "bad")] * 4, *[Response(401, "who")] * 4, *[Response(404, "gone")] * 4)
    await fail(http, 12)
    assert http.breaker.state is BreakerState.CLOSED


async def test_a_success_resets_the_failure_count(make, script):
    http = make(NO_RETRY)
    script.then(*[Response(500, "x")] * 4, Response(200, {}), *[Response(500, "x")] * 4)
    await fail(http, 4)
    await http.call(READ, "GET", "/x")
    await fail(http, 4)
    assert http.breaker.state is BreakerState.CLOSED


async def test_retries_stop_when_the_breaker_opens(make, script, sleep):
    http = make(HttpPolicy(rate_per_second=1000.0, burst=1000, backoff=(1.0,) * 10))
    script.then(*[Response(503, "down")] * 20)
    with pytest.raises(ProviderError) as err:
        await http.call(READ, "GET", "/x")
    assert "circuit breaker open" in err.value.detail
    assert script.hits == 5


# -- secrets -----------------------------------------------------------------------------------------------------

async def test_credentials_never_reach_errors_logs_or_metrics(make, script, caplog):
    secret, auth_id = "td-s3cret-token-0123456789", "td-auth-id-987654"
    http = make(NO_RETRY, secrets=[secret, auth_id], headers={"Authorization": f"Bearer {secret}"})

    async def echo(request: Request) -> Response:
        return Response(401, f"invalid credentials api_key={request.query.get('api_key')} "
                             f"api_token={request.query.get('api_token')} header={request.headers['authorization']}")

    caplog.set_level(logging.DEBUG)
    server = FakeHttpServer(AsgiApp(echo))
    await server.start()
    try:
        with pytest.raises(ProviderError) as err:
            await ProviderHttp.call(http, READ, "GET", server.base_url + "/locations",
                                    params={"api_key": auth_id, "api_token": secret})
    finally:
        await server.stop()
    assert err.value.kind is ErrorKind.AUTH
    assert "invalid credentials" in str(err.value)  # the provider's message is kept...
    for text in (str(err.value), err.value.detail, repr(err.value.args), caplog.text,
                 generate_latest(REGISTRY).decode()):
        assert secret not in text and auth_id not in text  # ...without the secrets
    assert "api_token=%5Bredacted%5D" in caplog.text or "api_token=[redacted]" in caplog.text
