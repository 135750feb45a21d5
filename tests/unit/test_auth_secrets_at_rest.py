"""Secrets at rest: envelope encryption, tamper detection, key rotation, and the start-up rule for the KEK."""
from __future__ import annotations

import base64

import pytest

from gantry_server.domain.secrets_at_rest import Keyring, SecretsError, key_id, load_keyring

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_round_trip_with_context_and_a_fresh_dek_each_time():
    ring = Keyring(K1)
    a, b = ring.encrypt(b"luks-passphrase", context=b"vm-1"), ring.encrypt(b"luks-passphrase", context=b"vm-1")
    assert a != b and b"luks-passphrase" not in a
    assert ring.decrypt(a, context=b"vm-1") == b"luks-passphrase"
    assert ring.key_id_of(a) == key_id(K1)


def test_blob_for_another_row_or_tampered_blob_does_not_decrypt():
    ring = Keyring(K1)
    blob = ring.encrypt(b"secret", context=b"vm-1")
    with pytest.raises(SecretsError, match="authentication"):
        ring.decrypt(blob, context=b"vm-2")
    for i in (6, len(blob) // 2, len(blob) - 1):
        tampered = blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1:]
        with pytest.raises(SecretsError):
            ring.decrypt(tampered, context=b"vm-1")
    with pytest.raises(SecretsError, match="truncated"):
        ring.decrypt(blob[:40], context=b"vm-1")


def test_rotation_old_blobs_still_decrypt_and_rewrap_moves_them_to_the_new_key():
    old = Keyring(K1).encrypt(b"secret")
    ring = Keyring(K2, [K1])
    assert ring.decrypt(old) == b"secret"
    new = ring.rewrap(old)
    assert ring.key_id_of(new) == key_id(K2) and Keyring(K2).decrypt(new) == b"secret"
    with pytest.raises(SecretsError, match="not configured"):
        Keyring(K2).decrypt(old)


def test_no_key_material_in_repr_or_errors():
    ring = Keyring(K1)
    assert "\\x01" not in repr(ring) and base64.b64encode(K1).decode() not in repr(ring)
    with pytest.raises(SecretsError) as err:
        ring.decrypt(ring.encrypt(b"hunter2"), context=b"x")
    assert "hunter2" not in str(err.value)


def test_production_without_a_kek_refuses_to_start_with_one_line(tmp_path):
    with pytest.raises(SecretsError) as err:
        load_keyring(None, (), tmp_path, embedded=False)
    assert "GANTRY_KEK is required" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SecretsError, match="32 bytes"):
        load_keyring(base64.b64encode(b"short").decode(), (), tmp_path, embedded=False)


def test_embedded_default_generates_and_keeps_a_kek(tmp_path):
    first = load_keyring(None, (), tmp_path, embedded=True)
    blob = first.encrypt(b"x")
    assert load_keyring(None, (), tmp_path, embedded=True).decrypt(blob) == b"x"
    assert oct((tmp_path / "kek").stat().st_mode)[-3:] == "600"
    configured = load_keyring(base64.b64encode(K2).decode(), (base64.b64encode(K1).decode(),), tmp_path,
                              embedded=False)
    assert configured.active_id == key_id(K2)
