"""Caller IP: the gRPC peer, or behind trusted proxies the rightmost X-Forwarded-For entry no trusted proxy wrote."""
from __future__ import annotations

import pytest

from gantry_server.config import ConfigError, Settings
from gantry_server.domain.auth.caller import TrustedProxies, peer_ip


@pytest.mark.parametrize(("peer", "ip"), [
    ("ipv4:203.0.113.9:51234", "203.0.113.9"), ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
    ("unix:/tmp/s", ""), (None, ""),
])
def test_peer_ip(peer, ip):
    assert peer_ip(peer) == ip


def test_forwarded_for_is_ignored_unless_the_peer_is_trusted():
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.1"])
    assert proxies.client_ip("10.9.9.9", "198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert proxies.client_ip("192.0.2.1", "198.51.100.8") == "198.51.100.8"
    assert proxies.client_ip("203.0.113.9", "198.51.100.7") == "203.0.113.9"  # spoof attempt
    assert proxies.client_ip("10.9.9.9", "not-an-ip") == "10.9.9.9"
    assert TrustedProxies([]).client_ip("10.9.9.9", "198.51.100.7") == "10.9.9.9"
    # a client-written entry left of what the proxy appended is not believed; trusted hops are skipped
    assert proxies.client_ip("10.9.9.9", "6.6.6.6, 198.51.100.7") == "198.51.100.7"
    assert proxies.client_ip("10.9.9.9", "6.6.6.6, 198.51.100.7, 10.1.1.1") == "198.51.100.7"


def test_settings_read_trusted_proxies_and_kek():
    s = Settings.from_env({"GANTRY_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1", "GANTRY_KEK": "a2V5"})
    assert s.trusted_proxies == ("10.0.0.0/8", "192.0.2.1") and s.kek == "a2V5"
    assert "a2V5" not in repr(s)
    with pytest.raises(ConfigError, match="GANTRY_TRUSTED_PROXIES"):
        Settings.from_env({"GANTRY_TRUSTED_PROXIES": "nope"})
