"""GANTRY_TLS_* and GANTRY_ALLOW_PLAINTEXT: read once, half a configuration stops the start with one line."""
from __future__ import annotations

import pytest

from gantry_server.config import ConfigError, Settings


@pytest.fixture
def pem(tmp_path):
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    return tmp_path


def test_tls_files_and_the_plaintext_switch_are_read(pem):
    s = Settings.from_env({"GANTRY_TLS_CERT_FILE": str(pem / "cert.pem"), "GANTRY_TLS_KEY_FILE": str(pem / "key.pem"),
                           "GANTRY_TLS_CLIENT_CA_FILE": str(pem / "ca.pem"), "GANTRY_ALLOW_PLAINTEXT": "true"})
    assert (s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file) == (pem / "cert.pem", pem / "key.pem",
                                                                      pem / "ca.pem")
    assert s.allow_plaintext
    plain = Settings.from_env({})
    assert plain.tls_cert_file is None and not plain.allow_plaintext


@pytest.mark.parametrize("env,message", [
    ({"GANTRY_TLS_CERT_FILE": "cert.pem"}, "GANTRY_TLS_CERT_FILE and GANTRY_TLS_KEY_FILE must be set together"),
    ({"GANTRY_TLS_KEY_FILE": "key.pem"}, "GANTRY_TLS_CERT_FILE and GANTRY_TLS_KEY_FILE must be set together"),
    ({"GANTRY_TLS_CLIENT_CA_FILE": "ca.pem"}, "GANTRY_TLS_CLIENT_CA_FILE (mTLS) needs GANTRY_TLS_CERT_FILE"),
    ({"GANTRY_TLS_CERT_FILE": "missing.pem", "GANTRY_TLS_KEY_FILE": "key.pem"},
     "GANTRY_TLS_CERT_FILE must name a readable PEM file"),
    ({"GANTRY_ALLOW_PLAINTEXT": "perhaps"}, "GANTRY_ALLOW_PLAINTEXT must be a boolean"),
])
def test_half_a_tls_configuration_stops_the_start(pem, env, message):
    env = {k: str(pem / v) if k.startswith("GANTRY_TLS") else v for k, v in env.items()}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)
