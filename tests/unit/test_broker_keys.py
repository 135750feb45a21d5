"""Session key pairs: the formats a consumer's OpenSSH reads, Ed25519 unless RSA is asked for."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gantry_server.broker.keys import KEY_TYPES, generate_keypair, generate_keypair_async, normalize_key_type


def _public_of(private_pem: str) -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None) \
        if "OPENSSH" in private_pem else serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_default_is_an_ed25519_openssh_key_pair():
    pair = generate_keypair()
    assert pair.key_type == "ed25519"
    assert pair.private_pem.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair.public_openssh.startswith("ssh-ed25519 ")
    assert _public_of(pair.private_pem) == pair.public_openssh


async def test_rsa_is_4096_bit_pkcs1_like_the_reference():
    pair = await generate_keypair_async("rsa")
    assert pair.key_type == "rsa"
    assert pair.private_pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pair.public_openssh.startswith("ssh-rsa ")
    key = serialization.load_pem_private_key(pair.private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
    assert _public_of(pair.private_pem) == pair.public_openssh


def test_every_pair_is_fresh():
    assert generate_keypair().private_pem != generate_keypair().private_pem


@pytest.mark.parametrize("given,expected", [("ed25519", "ed25519"), ("RSA", "rsa"), (" Ed25519 ", "ed25519")])
def test_key_type_names_are_case_insensitive(given, expected):
    assert normalize_key_type(given) == expected


@pytest.mark.parametrize("bad", ["dsa", "ecdsa", "", "ssh-rsa"])
def test_an_unsupported_type_is_refused_naming_the_allowed_ones(bad):
    with pytest.raises(ValueError) as err:
        generate_keypair(bad)
    assert all(name in str(err.value) for name in KEY_TYPES)


def test_the_private_key_never_shows_in_repr():
    pair = generate_keypair()
    assert pair.private_pem not in repr(pair)
    assert "PRIVATE" not in repr(pair)


def test_a_comment_ends_the_authorized_keys_line():
    assert generate_keypair(comment="gantry-session-1").public_openssh.endswith(" gantry-session-1")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH's ssh-keygen is not installed")
@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
def test_openssh_reads_the_private_key_and_agrees_on_the_fingerprint(tmp_path, key_type):
    pair = generate_keypair(key_type)
    path = tmp_path / "id"
    path.write_text(pair.private_pem)
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == pair.public_openssh.split()[:2]
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True,
                            check=True)
    assert pair.fingerprint in listed.stdout
