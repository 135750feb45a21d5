"""No malformed credential reaches INTERNAL (issue 17): hostile values in every credential header and metadata
key the auth interceptor reads, through the REST gateway and native gRPC, against one RPC of every auth policy
kind. Every answer is a 4xx / UNAUTHENTICATED, INVALID_ARGUMENT or PERMISSION_DENIED that says in words what was
wrong; never a 5xx, INTERNAL or UNKNOWN.

gRPC metadata values can only be printable ASCII (the client library refuses anything else before sending), so
the native face gets the printable projection of each value (metadata over gRPC's 8 KiB limit may be refused by
the transport itself: RESOURCE_EXHAUSTED "... metadata size ..."). HTTP header values can carry any byte but
controls, which the REST face sends as UTF-8 (the gateway drops a header that is not printable ASCII, so it must
then answer as for a missing credential). The server trusts 127.0.0.1 as a proxy here, so `x-forwarded-for`,
`x-client-cert` and the gateway's `x-gantry-*` keys sent over native gRPC are parsed too, not ignored.

Bounded: a fixed number of examples (about 20 s on a shared 2-core machine), no deadline per example.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gantry_server import metadata_keys as mk
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import BrokerSettings

from ..conftest import make_settings

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"

# (RPC, HTTP method, HTTP path, JSON body): one RPC of every policy kind the interceptor authenticates.
TARGETS = [
    ("/gantry.miner.v1.MinerService/ListChutes", "GET", "/miner/chutes/", None),  # hotkey, v1 purpose, registered
    ("/gantry.servers.v1.ServerService/CreateServer", "POST", "/servers/", {}),  # hotkey, v1 body hash
    ("/gantry.servers.v1.ServerService/GetServerDetails", "GET", "/servers/srv-1", None),  # hotkey, purpose tee
    ("/gantry.instances.v1.InstanceService/GetTeeInstanceEvidence", "GET", "/instances/i-1/evidence", None),  # user
    ("/gantry.instances.v1.InstanceService/ClaimLaunchConfig", "POST", "/instances/launch_config/cfg-1", {}),
    ("/gantry.instances.v1.InstanceService/StreamStartupLogs", "GET", "/miner/instance_logs", None),  # token sub
    ("/gantry.instances.v1.InstanceService/ClaimTeeLaunchConfig", "POST", "/instances/launch_config/cfg-1/tee",
     {}),  # launch token + attestation nonce
    ("/gantry.servers.v1.ServerService/SyncLuksPassphrases", "POST", "/servers/vm-1/luks", {"volumes": ["storage"]}),
    ("/gantry.servers.v1.ServerService/GetCacheLuksPassphrase", "GET", f"/servers/vm-1/luks?hotkey={ALICE}", None),
    ("/gantry.servers.v1.ServerService/VerifyBootAttestation", "POST", "/servers/boot/attestation",
     {"quote": "AAAA", "miner_hotkey": ALICE, "vm_name": "vm-1"}),  # attestation nonce only
    ("/gantry.admin.v1.AdminService/ListMeasurementPolicies", "GET", "/admin/v1/measurements", None),  # admin
    ("/gantry.broker.v1.CostService/GetCosts", "GET", "/api/v1/costs", None),  # consumer (GANTRY_BROKER_AUTH)
    ("/gantry.broker.v1.SessionService/CreateSession", "POST", "/api/v1/sessions", {}),  # consumer, rate-limited
]
STREAMS = {"/gantry.instances.v1.InstanceService/StreamStartupLogs"}

# Every key the auth interceptor (and the client-certificate binding) reads, on both faces.
CREDENTIAL_KEYS = (mk.HOTKEY, mk.SIGNATURE, mk.NONCE, mk.SIG_VERSION, mk.AUTHORIZATION, mk.BOOT_TOKEN,
                   mk.CLIENT_CERT, mk.FORWARDED_FOR, mk.REQUEST_ID)
NATIVE_ONLY_KEYS = (mk.HTTP_METHOD, mk.HTTP_PATH, mk.BODY_SHA256)  # stripped from HTTP requests by the gateway

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
NOW = 1767225600  # the server's ManualClock: a baseline nonce inside the window, so checks go on to the signature
HOSTILE_CONSTANTS = [
    "", " ", "abc", "..", "../../etc/passwd", "\x00", "a\x00b", "%00", "%ZZ", "é", "日本", "\u202e", "\ufeff1",
    "-1", "0", "1.5", "1e10", "NaN", "inf", "99999999999999999999999", str(2**63), str(-2**63), " 1 ", "0x10",
    str(NOW), f"{NOW}.", f".{NOW}", f"{NOW}.abc", f"{NOW}.{'a' * 129}", f"{NOW}..x", f"{NOW * 1000}.x", "1.x",
    "2", "3", "v2", "1 ", "01", "２",
    "0" * 128, "0x" + "0" * 128, "g" * 128, "a" * 127, "A" * 129, "a" * 100_000,
    "0" * 64, "G" * 64, "A" * 64, "0" * 63, "0" * 65,
    ALICE, ALICE[:-1] + "Z", ALICE.lower(), ALICE + "1", "1" * 48, "1" * 40, "z" * 50, "0" * 48, "l" * 48,
    "Bearer", "Bearer ", "Bearer  x", "bearer x", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer cpk_", "cpk_",
    "Bearer cpk_" + "x" * 100, "Bearer a.b.c", "Bearer ...", "Bearer eyJ.eyJ.sig", "eyJhbGciOiJub25lIn0.e30.",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJjZmctMSJ9.", "Bearer eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c2ln",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.AAAA", "Bearer \x7f",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----", "%E0%A4%A", "%FF%FE",
    "1.2.3.4, ::1, garbage", "999.1.1.1", "::ffff:127.0.0.1", ",,,", "unknown", "[::1]:80",
    "GET", "get", "BREW", "/servers/?a=%ZZ", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
]
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_CONSTANTS),
    st.text(max_size=200),  # any code point, controls included
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=140),  # near-hex of near-right length
    st.text(alphabet=_BASE58, min_size=38, max_size=52),  # near-SS58
    st.integers().map(str),
    st.builds(lambda ts, tail: f"{ts}.{tail}", st.integers(-10**14, 10**14), st.text(max_size=12)),
    st.builds(lambda a, b, c: f"Bearer {a}.{b}.{c}", *(st.text(alphabet=_BASE58 + "-_=", max_size=40),) * 3),
)
BASELINE = {mk.HOTKEY: ALICE, mk.SIGNATURE: "0" * 128, mk.NONCE: str(NOW), mk.SIG_VERSION: "1"}
ALLOWED_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
                 grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory):
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("credentials-fuzz"),
                             trusted_proxies=("127.0.0.1/32",),
                             broker=BrokerSettings(auth="required", providers=(), background_loops=False))
    gantry = GantryApp(settings, clock=ManualClock(datetime.fromtimestamp(NOW, timezone.utc)))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as client:
        yield client


def _printable(value: str) -> str:
    return "".join(c for c in value if " " <= c <= "~")


_CONTROLS = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"


def _header_bytes(value: str) -> bytes:
    """What an HTTP/1.1 client can send: any byte but controls (tab inside), no surrounding whitespace."""
    return value.encode("utf-8", "surrogatepass").translate(None, _CONTROLS).strip(b" \t")


def _status_words(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    reasons = [info.reason for d in (status.details if status else ()) if d.Unpack(info)]
    return f"{err.details()} {reasons}"


async def _native(channel, rpc: str, metadata: list[tuple[str, str]]) -> None:
    try:
        if rpc in STREAMS:
            call = channel.unary_stream(rpc, request_serializer=None, response_deserializer=None)(
                b"", metadata=metadata, timeout=20)
            async for _ in call:
                break
        else:
            await channel.unary_unary(rpc, request_serializer=None, response_deserializer=None)(
                b"", metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as err:
        words = _status_words(err)
        if sum(len(k) + len(v) for k, v in metadata) > 8192 and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "metadata size" in (err.details() or "")  # the transport's limit (8 KiB soft, 16 KiB hard)
            return
        assert err.code() in ALLOWED_CODES, f"{rpc} {metadata!r:.600} -> {err.code()} {words}"
        assert len((err.details() or "").split()) >= 2, f"{rpc} answered {err.code()} without words"
        return
    raise AssertionError(f"{rpc} accepted hostile credentials {metadata!r:.600}")


async def _rest(http, verb: str, path: str, body, headers: list[tuple[bytes, bytes]]) -> None:
    content = json.dumps(body).encode() if body is not None else None
    extra = [(b"content-type", b"application/json")] if body is not None else []
    async with http.stream(verb, path, content=content, headers=headers + extra) as response:
        text = (await response.aread()).decode("utf-8", "replace")
    assert 400 <= response.status_code < 500, f"{verb} {path} {headers!r:.600} -> {response.status_code} {text:.300}"
    assert len(text.split()) >= 2, f"{verb} {path} answered {response.status_code} without words: {text!r}"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(TARGETS), baseline=st.booleans(),
       hostile=st.dictionaries(st.sampled_from(CREDENTIAL_KEYS + NATIVE_ONLY_KEYS), HOSTILE, min_size=1, max_size=4))
async def test_hostile_credentials_never_reach_internal(app, channel, http, target, baseline, hostile):
    rpc, verb, path, body = target
    values = (dict(BASELINE) if baseline else {}) | hostile
    await _native(channel, rpc, [(k, _printable(v)) for k, v in values.items()])
    headers = [(k.encode(), _header_bytes(v)) for k, v in values.items() if k not in NATIVE_ONLY_KEYS]
    await _rest(http, verb, path, body, headers)


@pytest.mark.parametrize(("key", "value"), [(mk.NONCE, "abc"), (mk.NONCE, "12x"), (mk.NONCE, "1" * 13),
                                            (mk.NONCE, "-5")])
async def test_a_malformed_v1_nonce_is_401_saying_what_a_nonce_is(channel, http, key, value):
    headers = BASELINE | {key: value}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(TARGETS[0][0], request_serializer=None, response_deserializer=None)(
            b"", metadata=list(headers.items()))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details().startswith(f"v1 nonce must be decimal unix seconds, got {value!r}")
    rest = await http.get("/miner/chutes/", headers=headers)
    assert rest.status_code == 401 and rest.json()["detail"].startswith("v1 nonce must be decimal unix seconds")


@pytest.mark.parametrize("hotkey", ["not-a-hotkey", "0" * 48, ALICE[:-1] + "Z", ALICE.lower(), "l" * 48])
async def test_a_non_ss58_hotkey_is_401_saying_so(channel, http, hotkey):
    headers = BASELINE | {mk.HOTKEY: hotkey}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.unary_unary(TARGETS[0][0], request_serializer=None, response_deserializer=None)(
            b"", metadata=list(headers.items()))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details().startswith(f"hotkey {hotkey!r} is not an SS58 address")
    rest = await http.get("/miner/chutes/", headers=headers)
    assert rest.status_code == 401 and "is not an SS58 address" in rest.json()["detail"]
