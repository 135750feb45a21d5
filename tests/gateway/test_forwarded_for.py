"""X-Forwarded-For through REST follows the one trusted-proxy rule of both faces (GANTRY_TRUSTED_PROXIES).

Observed through an IP-bound nonce: `GET /servers/nonce` binds the boot nonce to the caller's address, and
`POST /servers/boot/attestation` refuses it from any other address ("issued to another IP address", 401) before the
handler looks at the body (an empty body is then a 422 from the handler: the nonce was accepted).
"""
from __future__ import annotations

import httpx
import pytest

from gantry_server.app import GantryApp

from ..conftest import make_settings

FORGED = "198.51.100.7"


async def _nonce(client: httpx.AsyncClient, xff: str | None = None) -> str:
    r = await client.get("/servers/nonce", headers={"X-Forwarded-For": xff} if xff else {})
    assert r.status_code == 200, r.text
    return r.json()["nonce"]


async def _attest(client: httpx.AsyncClient, nonce: str, xff: str | None = None) -> httpx.Response:
    headers = {"X-Chutes-Nonce": nonce, **({"X-Forwarded-For": xff} if xff else {})}
    return await client.post("/servers/boot/attestation", json={}, headers=headers)


def _accepted(r: httpx.Response) -> bool:
    return r.status_code == 422 and "another IP" not in r.text


def _wrong_ip(r: httpx.Response) -> bool:
    return r.status_code == 401 and "another IP address" in r.text


@pytest.fixture(scope="module")
async def proxied(database_url, redis_url, tmp_path_factory):
    """A server whose REST clients all come through a trusted proxy at 127.0.0.1."""
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("xff"),
                                     trusted_proxies=("127.0.0.1/32",)))
    await gantry.start()
    async with httpx.AsyncClient(base_url=f"http://{gantry.http_addr}", timeout=10) as client:
        yield client
    await gantry.stop(0)


async def test_forwarded_for_from_an_untrusted_peer_is_ignored_for_ip_bound_nonces(http, redis):
    nonce = await _nonce(http, FORGED)  # bound to the TCP peer (127.0.0.1), not to the forged address
    assert _accepted(await _attest(http, nonce))
    nonce = await _nonce(http)
    assert _accepted(await _attest(http, nonce, FORGED))  # a forged header cannot move a nonce elsewhere either


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(proxied, redis):
    nonce = await _nonce(proxied, FORGED)
    assert _wrong_ip(await _attest(proxied, nonce))  # the proxy itself is not the client the nonce was issued to
    nonce = await _nonce(proxied, FORGED)
    assert _wrong_ip(await _attest(proxied, nonce, "203.0.113.50"))
    nonce = await _nonce(proxied, FORGED)
    assert _accepted(await _attest(proxied, nonce, FORGED))


async def test_addresses_a_client_wrote_left_of_the_proxys_entry_are_not_believed(proxied, redis):
    # The proxy appends the address it saw (here FORGED) to whatever the client sent ("203.0.113.50").
    nonce = await _nonce(proxied, f"203.0.113.50, {FORGED}")
    assert _wrong_ip(await _attest(proxied, nonce, "203.0.113.50"))
    nonce = await _nonce(proxied, f"203.0.113.50, {FORGED}")
    assert _accepted(await _attest(proxied, nonce, f"10.0.0.1, {FORGED}"))
