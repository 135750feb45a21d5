"""Broker settings: no silent demo mode in production, no simulated shell reachable from the network."""
from __future__ import annotations

import pytest

from gantry_server.broker.wiring import build_providers
from gantry_server.config import ConfigError, Settings

DB = {"GANTRY_DATABASE_URL": "postgresql://u:p@db:5432/g", "GANTRY_REDIS_URL": "redis://r:6379/0"}


def test_the_embedded_default_serves_the_simulated_provider_and_production_none():
    assert Settings.from_env({}).broker.providers == ("simulated",)
    assert Settings.from_env(DB).broker.providers == ()
    assert Settings.from_env(DB | {"GANTRY_BROKER_PROVIDERS": "simulated"}).broker.providers == ("simulated",)


@pytest.mark.parametrize("env,message", [
    ({"GANTRY_BROKER_PROVIDERS": "vastai"}, "GANTRY_VASTAI_API_KEY is not set"),
    ({"GANTRY_BROKER_PROVIDERS": "tensordock", "GANTRY_TENSORDOCK_API_TOKEN": "t"}, "GANTRY_TENSORDOCK_AUTH_ID"),
    ({"GANTRY_BROKER_PROVIDERS": "vastai,aws"}, "comma list of vastai, tensordock, simulated"),
    ({"GANTRY_BROKER_SHUTDOWN_POLICY": "maybe"}, "keep or destroy"),
    ({"GANTRY_DEPLOYMENT_ID": "a b"}, "letters, digits"),
    ({"GANTRY_VASTAI_RATE_PER_SECOND": "-1"}, "positive number"),
])
def test_bad_broker_settings_stop_the_start_with_one_line(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)


@pytest.mark.parametrize("addr", ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080"])
def test_the_simulated_provider_refuses_to_serve_beyond_loopback(addr):
    settings = Settings.from_env({"GANTRY_HTTP_ADDR": addr})
    with pytest.raises(ConfigError) as err:
        build_providers(settings, clock=None)
    assert "shell on this machine" in str(err.value)
    assert build_providers(Settings.from_env({"GANTRY_HTTP_ADDR": "127.0.0.1:8080"}), clock=None)
