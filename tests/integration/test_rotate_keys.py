"""Key rotation of secrets at rest: every encrypted column (store/encrypted_columns.py) moves from an old KEK to
the active one, batch by batch, without losing a concurrent write and without showing a secret anywhere.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from sqlalchemy import LargeBinary, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server import admin_cli
from gantry_server.app import GantryApp
from gantry_server.broker.sessions import _key_context
from gantry_server.domain import key_rotation
from gantry_server.domain.attestation import passphrases
from gantry_server.domain.secrets_at_rest import Keyring, SecretsError
from gantry_server.store.encrypted_columns import ENCRYPTED_COLUMNS, PLAIN_BINARY_COLUMNS
from gantry_server.domain.launch.secrets import rint_session_key_context, symmetric_key_context
from gantry_server.store.models import (broker_sessions, chutes, images, instances, metadata, users, vm_cache_configs,
                                        vm_luks_passphrases)

from ..conftest import ADMIN_METADATA, make_settings

OLD, NEW, STRANGER = b"o" * 32, b"n" * 32, b"s" * 32
B64 = {k: base64.b64encode(k).decode() for k in (OLD, NEW)}
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SESSIONS = "broker_sessions.ssh_private_key_enc"
LUKS = "vm_luks_passphrases.ciphertext"
SERVICE_KEYS = "service_keys.key_enc"  # empty here: clean_db removed the server's launch key
SYMMETRIC = "instances.symmetric_key_enc"
SESSION_KEY = "instances.rint_session_key_enc"


def secret(i: int) -> bytes:
    return f"-----BEGIN OPENSSH PRIVATE KEY----- plaintext-{i}-{uuid.uuid4().hex}".encode()


async def seed(engine, ring: Keyring, *, sessions: int, volumes: tuple[str, ...] = passphrases.SUPPORTED_VOLUMES,
               vms: int = 1, instance_count: int = 0) -> dict[tuple, bytes]:
    """Rows encrypted under `ring` the way their writers encrypt them; returns {(column, pk...): plaintext}."""
    plain: dict[tuple, bytes] = {}
    async with engine.begin() as conn:
        if instance_count:
            owner = str(uuid.uuid4())
            await conn.execute(users.insert().values(user_id=owner, username=f"u{owner[:8]}"))
            await conn.execute(images.insert().values(image_id=owner, user_id=owner, name="i", tag="1", created_at=T0,
                                                      updated_at=T0))
            await conn.execute(chutes.insert().values(chute_id=owner, user_id=owner, name="c", image_id=owner,
                                                      version="1", created_at=T0, updated_at=T0))
        for i in range(instance_count):
            iid, key, session = str(uuid.uuid4()), secrets.token_bytes(16), secrets.token_bytes(32)
            await conn.execute(instances.insert().values(
                instance_id=iid, chute_id=owner, version="1", host="203.0.113.9", port=30000 + i, miner_uid=1,
                miner_hotkey="5Hotkey", miner_coldkey="5Coldkey", created_at=T0,
                symmetric_key_enc=ring.encrypt(key, context=symmetric_key_context(iid)),
                rint_session_key_enc=ring.encrypt(session, context=rint_session_key_context(iid))))
            plain[(SYMMETRIC, iid)], plain[(SESSION_KEY, iid)] = key, session
        for i in range(sessions):
            sid, text_ = str(uuid.uuid4()), secret(i)
            await conn.execute(broker_sessions.insert().values(
                id=sid, consumer_id="rotation", provider="simulated", offer_id=f"offer-{sid}", gpu_type="RTX 4090",
                status="stopped", ssh_public_key="ssh-ed25519 AAAA", workload_type="interactive",
                reservation_hours=1, price_per_hour=0.5, created_at=T0, expires_at=T0 + timedelta(hours=1),
                provision_deadline=T0 + timedelta(minutes=10), updated_at=T0,
                ssh_private_key_enc=ring.encrypt(text_, context=_key_context(sid))))
            plain[(SESSIONS, sid)] = text_
        for v in range(vms):
            hotkey, vm = f"5Hotkey{uuid.uuid4().hex[:20]}", f"vm-{v}"
            await conn.execute(vm_cache_configs.insert().values(miner_hotkey=hotkey, vm_name=vm, created_at=T0))
            for volume in volumes:
                text_ = passphrases.new_passphrase().encode()
                await conn.execute(vm_luks_passphrases.insert().values(
                    miner_hotkey=hotkey, vm_name=vm, volume=volume, created_at=T0,
                    ciphertext=ring.encrypt(text_, context=passphrases.context(hotkey, vm, volume))))
                plain[(LUKS, hotkey, vm, volume)] = text_
    return plain


async def read_all(engine, ring: Keyring) -> dict[tuple, bytes]:
    """Every secret decrypted with `ring` (SecretsError if one cannot be)."""
    out = {}
    async with engine.connect() as conn:
        for r in await conn.execute(select(broker_sessions.c.id, broker_sessions.c.ssh_private_key_enc)):
            out[(SESSIONS, r.id)] = ring.decrypt(r.ssh_private_key_enc, context=_key_context(r.id))
        for r in await conn.execute(select(vm_luks_passphrases)):
            out[(LUKS, r.miner_hotkey, r.vm_name, r.volume)] = ring.decrypt(
                r.ciphertext, context=passphrases.context(r.miner_hotkey, r.vm_name, r.volume))
        for r in await conn.execute(select(instances)):
            out[(SYMMETRIC, r.instance_id)] = ring.decrypt(r.symmetric_key_enc,
                                                           context=symmetric_key_context(r.instance_id))
            out[(SESSION_KEY, r.instance_id)] = ring.decrypt(r.rint_session_key_enc,
                                                             context=rint_session_key_context(r.instance_id))
    return out


def counts(reports) -> dict[str, tuple[int, int, int, int, int]]:
    return {r.column: (r.scanned, r.rewrapped, r.current, r.changed_concurrently, r.failed) for r in reports}


def test_every_binary_column_of_the_schema_is_listed_as_encrypted_or_plain():
    listed = {spec.name for spec in ENCRYPTED_COLUMNS}
    binary = {f"{t.name}.{c.name}" for t in metadata.sorted_tables for c in t.columns
              if isinstance(c.type, LargeBinary)}
    assert binary == listed | PLAIN_BINARY_COLUMNS, "add the column to store/encrypted_columns.py"


async def test_rotation_makes_old_secrets_readable_under_the_new_key_alone(clean_db, caplog):
    caplog.set_level(logging.DEBUG)
    plain = await seed(clean_db, Keyring(OLD), sessions=7, vms=2, instance_count=4)
    with pytest.raises(SecretsError):
        await read_all(clean_db, Keyring(NEW))  # not before rotation
    rotating = Keyring(NEW, [OLD])
    assert await read_all(clean_db, rotating) == plain

    reports = await key_rotation.rotate_all(clean_db, rotating, batch_size=3)  # several batches per column
    assert counts(reports) == {SESSIONS: (7, 7, 0, 0, 0), LUKS: (6, 6, 0, 0, 0), SERVICE_KEYS: (0, 0, 0, 0, 0),
                               SYMMETRIC: (4, 4, 0, 0, 0), SESSION_KEY: (4, 4, 0, 0, 0)}
    assert await read_all(clean_db, Keyring(NEW)) == plain  # the new key alone now
    with pytest.raises(SecretsError):
        await read_all(clean_db, Keyring(OLD))  # and the old key alone no longer

    again = await key_rotation.rotate_all(clean_db, rotating, batch_size=3)
    assert counts(again) == {SESSIONS: (7, 0, 7, 0, 0), LUKS: (6, 0, 6, 0, 0), SERVICE_KEYS: (0, 0, 0, 0, 0),
                             SYMMETRIC: (4, 0, 4, 0, 0), SESSION_KEY: (4, 0, 4, 0, 0)}
    for text_ in plain.values():
        assert text_.hex() not in caplog.text and text_.decode(errors="replace") not in caplog.text
    assert "rewrapped=7" in caplog.text


async def test_rows_it_cannot_decrypt_are_counted_and_passed_not_retried(clean_db):
    await seed(clean_db, Keyring(OLD), sessions=2, volumes=())
    await seed(clean_db, Keyring(STRANGER), sessions=1, volumes=())
    reports = await key_rotation.rotate_all(clean_db, Keyring(NEW, [OLD]), batch_size=1)
    assert counts(reports)[SESSIONS] == (3, 2, 0, 0, 1)


async def test_a_row_rewritten_concurrently_keeps_the_writers_value(clean_db):
    """The rotation read a blob; a server replaced it before the rotation wrote: the conditional UPDATE on the
    old ciphertext loses nothing (it skips that row), and the rest of the batch is rewrapped."""
    await seed(clean_db, Keyring(OLD), sessions=3, volumes=())
    spec = next(s for s in ENCRYPTED_COLUMNS if s.name == SESSIONS)
    ring = Keyring(NEW, [OLD])
    async with clean_db.connect() as conn:
        stale = (await conn.execute(select(broker_sessions.c.id, broker_sessions.c.ssh_private_key_enc)
                                    .order_by(broker_sessions.c.id))).mappings().all()
    victim = stale[1]["id"]
    fresh = ring.encrypt(b"the writer's newer secret", context=_key_context(victim))
    async with clean_db.begin() as conn:  # the concurrent writer (a server replica)
        await conn.execute(broker_sessions.update().where(broker_sessions.c.id == victim)
                           .values(ssh_private_key_enc=fresh))
    report = key_rotation.ColumnReport(spec.name)
    async with clean_db.begin() as conn:
        await key_rotation.rewrap_rows(conn, spec, ring, stale, report)
    assert (report.rewrapped, report.changed_concurrently) == (2, 1)
    after = await read_all(clean_db, Keyring(NEW))
    assert after[(SESSIONS, victim)] == b"the writer's newer secret"


# -- through the server: AdminService.RotateKeys and `gantry admin rotate-keys` --------------------------------
@pytest.fixture(scope="module")
async def rotating_app(database_url, redis_url, tmp_path_factory):
    """A server whose GANTRY_KEK is the new key, with the old one in GANTRY_KEK_PREVIOUS."""
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("rotate"),
                                     kek=B64[NEW], kek_previous=(B64[OLD],)))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


async def test_cli_rotates_through_the_server_and_shows_counts_only(rotating_app, clean_db, redis, capsys,
                                                                     caplog, monkeypatch):
    for name in ("GANTRY_ADMIN_TOKEN", "GANTRY_GRPC_ADDR"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    plain = await seed(clean_db, Keyring(OLD), sessions=4)
    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "test-admin-token")  # never on the command line (`ps` shows it)
    common = ["--addr", rotating_app.grpc_addr]

    assert await admin_cli.amain([*common, "rotate-keys", "--json", "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert row["active_key_id"] == Keyring(NEW).active_id and err == ""
    assert {c["column"]: c["rewrapped"] for c in row["columns"]} == {SESSIONS: 4, LUKS: 3, SERVICE_KEYS: 0,
                                                                      SYMMETRIC: 0, SESSION_KEY: 0}
    assert await read_all(clean_db, Keyring(NEW)) == plain

    assert await admin_cli.amain([*common, "rotate-keys"]) == 0  # table output, nothing left to do
    out, _ = capsys.readouterr()
    assert "rewrapped=0" in out and f"column={SESSIONS}" in out
    for text_ in plain.values():
        assert text_.decode() not in out and text_.decode() not in caplog.text

    await seed(clean_db, Keyring(STRANGER), sessions=1, volumes=())
    assert await admin_cli.amain([*common, "rotate-keys", "--json"]) == 1  # a row it could not decrypt
    out, err = capsys.readouterr()
    assert {c["column"]: c["failed"] for c in json.loads(out)["columns"]}[SESSIONS] == 1
    assert "could not be decrypted" in err


async def test_rotate_keys_rpc_checks_its_input_and_the_admin_token(rotating_app, clean_db):
    async with grpc.aio.insecure_channel(rotating_app.grpc_addr) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RotateKeys(admin_pb2.RotateKeysRequest(batch_size=10_001), metadata=ADMIN_METADATA)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch_size" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.RotateKeys(admin_pb2.RotateKeysRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        done = await admin.RotateKeys(admin_pb2.RotateKeysRequest(), metadata=ADMIN_METADATA)
        assert [c.scanned for c in done.columns] == [0, 0, 0, 0, 0]
