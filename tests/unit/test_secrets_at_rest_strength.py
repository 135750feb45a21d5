"""Secrets at rest, at the edges mutation testing found untested (issue 17): the exact refusal an operator reads
for each bad key or blob, HKDF subkeys per key and purpose, rotation with a context, and the KEK file rules."""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gantry_server.domain.secrets_at_rest import (Keyring, SecretsError, key_id, load_keyring, parse_kek,
                                                  write_secret_file)

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(SecretsError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_key_ids_are_the_first_8_hex_of_the_keys_sha256():
    assert key_id(K1) == hashlib.sha256(K1).hexdigest()[:8] and len(key_id(K1)) == 8


@pytest.mark.parametrize("value", ["not base64!", "AAAA*AAA", b64(K1)[:-1] + "!", "%%%%"])
def test_a_kek_that_is_not_strict_base64_is_refused_naming_the_variable(value):
    assert refused(parse_kek, "GANTRY_KEK", value) == ("GANTRY_KEK must be base64 of 32 bytes (e.g. `openssl rand "
                                                      "-base64 32`)")


def test_a_kek_of_the_wrong_length_says_how_long_it_is():
    assert refused(parse_kek, "GANTRY_KEK_PREVIOUS", b64(b"x" * 31)) == \
        "GANTRY_KEK_PREVIOUS must be base64 of 32 bytes, got 31 bytes"
    assert parse_kek("GANTRY_KEK", f"  {b64(K1)}\n") == K1


def test_from_keys_makes_the_first_key_active_and_keeps_the_others_for_decrypting():
    ring = Keyring.from_keys([K2, K1, K3])
    assert ring.active_id == key_id(K2) and ring.key_ids == (key_id(K2), *sorted([key_id(K1), key_id(K3)]))
    for old in (K1, K3):
        assert ring.decrypt(Keyring(old).encrypt(b"s")) == b"s"
    assert Keyring.from_keys([K1]).key_ids == (key_id(K1),)


@pytest.mark.parametrize("blob", [b"", b"GSE", b"GSE1", b"XXXX" + bytes(100), b"gse1" + bytes(100)])
def test_what_is_not_a_blob_is_refused_in_words(blob):
    ring = Keyring(K1)
    assert refused(ring.decrypt, blob) == "not a Gantry secret blob (GSE1)"
    assert refused(ring.key_id_of, blob) == "not a Gantry secret blob (GSE1)"


def test_the_key_id_of_a_blob_is_read_from_its_header_alone():
    assert Keyring(K1).key_id_of(b"GSE1\x00") == ""  # the shortest header: an empty key id
    assert Keyring(K1).key_id_of(Keyring(K2).encrypt(b"s")) == key_id(K2)


def test_a_blob_one_byte_short_of_its_smallest_shape_is_truncated():
    ring = Keyring(K1)
    blob = ring.encrypt(b"")  # header + wrap nonce + wrapped DEK + nonce + tag: the smallest blob
    assert ring.decrypt(blob) == b""
    assert refused(ring.decrypt, blob[:-1]) == "secret blob is truncated"
    assert refused(ring.decrypt, blob[:5]) == "secret blob is truncated"
    assert refused(ring.decrypt, blob[:-1] + bytes([blob[-1] ^ 1])) == \
        "secret blob failed authentication (tampered, or another context)"


def test_a_blob_under_an_unknown_key_names_its_key_id_even_when_garbled():
    ring = Keyring(K1)
    other = Keyring(K2).encrypt(b"s")
    assert refused(ring.decrypt, other) == (f"secret was encrypted under key id {key_id(K2)!r}, which is not "
                                            f"configured (GANTRY_KEK / GANTRY_KEK_PREVIOUS)")
    garbled = b"GSE1" + bytes([8]) + b"\xff\xfeabcdef" + bytes(100)  # not ASCII: replaced, never an exception
    assert refused(ring.decrypt, garbled).startswith("secret was encrypted under key id '\ufffd\ufffdabcdef'")
    assert ring.key_id_of(garbled) == "\ufffd\ufffdabcdef"


def test_a_tampered_payload_fails_authentication_in_words():
    ring = Keyring(K1)
    blob = ring.encrypt(b"secret", context=b"row-1")
    assert refused(ring.decrypt, blob[:-1] + bytes([blob[-1] ^ 1]), context=b"row-1") == \
        "secret blob failed authentication (tampered, or another context)"


def test_subkeys_are_hkdf_of_the_chosen_kek_per_purpose():
    ring = Keyring(K2, [K1])

    def hkdf(raw: bytes, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gantry:" + purpose).derive(raw)

    assert ring.derive(b"user-tokens") == hkdf(K2, b"user-tokens") == ring.derive(b"user-tokens", key_id(K2))
    assert ring.derive(b"user-tokens", key_id(K1)) == hkdf(K1, b"user-tokens")
    assert ring.derive(b"other") != ring.derive(b"user-tokens")
    assert refused(ring.derive, b"user-tokens", "deadbeef") == \
        "key id 'deadbeef' is not configured (GANTRY_KEK / GANTRY_KEK_PREVIOUS)"


def test_rewrap_keeps_the_context_binding():
    old = Keyring(K1).encrypt(b"secret", context=b"vm-1")
    ring = Keyring(K2, [K1])
    new = ring.rewrap(old, context=b"vm-1")
    assert ring.key_id_of(new) == key_id(K2) and ring.decrypt(new, context=b"vm-1") == b"secret"
    assert refused(ring.decrypt, new) == "secret blob failed authentication (tampered, or another context)"
    assert ring.rewrap(new, context=b"vm-1") is new  # already under the active key: no copy


def test_a_secret_file_is_created_once_with_its_folders_and_owner_only(tmp_path):
    path = tmp_path / "a" / "b" / "kek"
    assert write_secret_file(path, "one") is True
    assert write_secret_file(path, "two") is False
    assert path.read_text() == "one" and oct(path.stat().st_mode)[-3:] == "600"


def test_configured_keys_name_their_variable_when_bad(tmp_path):
    assert refused(load_keyring, "nope!", (), tmp_path, embedded=False).startswith("GANTRY_KEK must be base64")
    assert refused(load_keyring, b64(K1), ("nope!",), tmp_path, embedded=False).startswith(
        "GANTRY_KEK_PREVIOUS must be base64")
    assert refused(load_keyring, None, (), tmp_path, embedded=False) == (
        "GANTRY_KEK is required when GANTRY_DATABASE_URL and GANTRY_REDIS_URL are set (base64 of 32 bytes, e.g. "
        "`openssl rand -base64 32`)")


def test_previous_keys_decrypt_with_a_configured_or_an_embedded_kek(tmp_path):
    old = Keyring(K1).encrypt(b"s")
    assert load_keyring(b64(K2), (b64(K1), " "), tmp_path, embedded=False).decrypt(old) == b"s"
    embedded = load_keyring(None, (b64(K1),), tmp_path / "data", embedded=True)
    assert embedded.decrypt(old) == b"s" and embedded.active_id != key_id(K1)
    stored = (tmp_path / "data" / "kek").read_text()
    assert len(base64.b64decode(stored, validate=True)) == 32
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "kek").write_text("garbage!")
    assert refused(load_keyring, None, (), tmp_path / "bad", embedded=True) == \
        f"{tmp_path / 'bad' / 'kek'} must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)"
