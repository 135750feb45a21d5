"""User tokens end to end: issued through AdminService (gRPC, REST, `gantry admin token`), accepted where the
policy says `user`, refused with a clear reason when expired, tampered, foreign, revoked or for an unknown user.

GetTeeInstanceEvidence (policy `user`) of an instance that does not exist: NOT_FOUND below means "authenticated".
Time is the server's ManualClock, moved by hand; it only moves forward, so each test issues its own tokens.
"""
from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import datetime, timezone

import grpc
import httpx
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry_server import admin_cli
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.domain.auth.user_tokens import AUDIENCE, ISSUER

from ..conftest import ADMIN_METADATA, make_settings

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
EVIDENCE = instances_pb2.GetTeeInstanceEvidenceRequest(instance_id="i-1", nonce="0" * 64)


@pytest.fixture(scope="module")
async def token_app(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("tokens")),
                       clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def ch(token_app):
    async with grpc.aio.insecure_channel(token_app.grpc_addr) as channel:
        yield channel


@pytest.fixture
async def admin(ch, clean_db, redis):
    return admin_pb2_grpc.AdminServiceStub(ch)


async def new_user(admin) -> str:
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username=f"u{uuid.uuid4().hex[:12]}"),
                                  metadata=ADMIN_METADATA)
    return user.user_id


async def call(ch, token: str) -> tuple[grpc.StatusCode, str, str]:
    """(code, details, ErrorInfo reason) of a user-policy call with `token` as bearer."""
    try:
        await instances_pb2_grpc.InstanceServiceStub(ch).GetTeeInstanceEvidence(
            EVIDENCE, metadata=(("authorization", f"Bearer {token}"),))
    except grpc.aio.AioRpcError as err:
        info = error_details_pb2.ErrorInfo()
        status = rpc_status.from_call(err)
        reason = next((info.reason for d in (status.details if status else ()) if d.Unpack(info)), "")
        return err.code(), err.details() or "", reason
    return grpc.StatusCode.OK, "", ""


AUTHENTICATED = grpc.StatusCode.NOT_FOUND


async def test_a_user_token_authenticates_until_it_expires_by_the_server_clock(admin, ch, token_app):
    user_id = await new_user(admin)
    issued = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id, ttl_seconds=600),
                                         metadata=ADMIN_METADATA)
    now = token_app.rt.clock.now()
    assert issued.issued_at.seconds == int(now.timestamp())
    assert issued.expires_at.seconds == issued.issued_at.seconds + 600
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["sub"] == user_id and claims["jti"] == issued.token_id
    assert (claims["iss"], claims["aud"], claims["exp"] - claims["iat"]) == (ISSUER, AUDIENCE, 600)
    assert (await call(ch, issued.token))[0] == AUTHENTICATED

    token_app.rt.clock.advance(seconds=599)
    assert (await call(ch, issued.token))[0] == AUTHENTICATED
    token_app.rt.clock.advance(seconds=1)
    code, details, reason = await call(ch, issued.token)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_TOKEN_EXPIRED") and "expired" in details


async def test_the_token_is_returned_once_and_never_stored(admin, token_app):
    user_id = await new_user(admin)
    issued = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id, name="ci"),
                                         metadata=ADMIN_METADATA)
    assert issued.expires_at.seconds - issued.issued_at.seconds == 3600  # the default lifetime
    async with token_app.rt.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM user_tokens"))).mappings().all()
    assert [(r["token_id"], r["user_id"], r["name"]) for r in rows] == [(issued.token_id, user_id, "ci")]
    assert issued.token not in repr(rows) and issued.token.split(".")[2] not in repr(rows)


async def test_a_revoked_token_is_refused_at_once(admin, ch):
    user_id = await new_user(admin)
    issued = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id), metadata=ADMIN_METADATA)
    other = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id), metadata=ADMIN_METADATA)
    await admin.RevokeUserToken(admin_pb2.RevokeUserTokenRequest(token_id=issued.token_id), metadata=ADMIN_METADATA)
    code, details, reason = await call(ch, issued.token)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_TOKEN_REVOKED") and "revoked" in details
    assert (await call(ch, other.token))[0] == AUTHENTICATED  # only that one token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RevokeUserToken(admin_pb2.RevokeUserTokenRequest(token_id=issued.token_id),
                                    metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _resign(token: str, key: bytes, **changes) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode({**claims, **changes}, key, algorithm="HS256", headers=jwt.get_unverified_header(token))


async def test_tampered_foreign_and_misaddressed_tokens_are_named(admin, ch, token_app):
    user_id = await new_user(admin)
    issued = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id), metadata=ADMIN_METADATA)
    head, body, sig = issued.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["exp"] += 86400
    forged = f"{head}.{base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b'=').decode()}.{sig}"
    code, details, reason = await call(ch, forged)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_TOKEN_INVALID") and "signature" in details

    key = token_app.rt.keyring.derive(b"user-token:hs256:v1")  # the server's own key: only the claim is wrong
    assert (await call(ch, _resign(issued.token, key, iss="chutes")))[2] == "USER_TOKEN_WRONG_ISSUER"
    assert (await call(ch, _resign(issued.token, key, aud="someone-else")))[2] == "USER_TOKEN_WRONG_AUDIENCE"
    code, details, reason = await call(ch, _resign(issued.token, key, sub=str(uuid.uuid4())))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_NOT_FOUND") and "user" in details
    # signed by the server's key but never issued (e.g. a jti of another user's token)
    assert (await call(ch, _resign(issued.token, key, jti=str(uuid.uuid4()))))[2] == "USER_TOKEN_INVALID"

    code, _, reason = await call(ch, "not.a.jwt")
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "USER_TOKEN_INVALID")


async def test_a_deleted_user_loses_its_tokens(admin, ch, token_app):
    user_id = await new_user(admin)
    issued = await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id), metadata=ADMIN_METADATA)
    async with token_app.rt.engine.begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE user_id = :u"), {"u": user_id})
    assert (await call(ch, issued.token))[:3:2] == (grpc.StatusCode.UNAUTHENTICATED, "USER_NOT_FOUND")


async def test_bad_requests_name_the_field(admin):
    user_id = await new_user(admin)
    for request, field in ((admin_pb2.CreateUserTokenRequest(user_id=user_id, ttl_seconds=59), "ttl_seconds"),
                           (admin_pb2.CreateUserTokenRequest(user_id=user_id, ttl_seconds=86401), "ttl_seconds"),
                           (admin_pb2.CreateUserTokenRequest(user_id="alice"), "user_id"),
                           (admin_pb2.CreateUserTokenRequest(user_id=user_id, name="x" * 256), "name")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.CreateUserToken(request, metadata=ADMIN_METADATA)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=str(uuid.uuid4())),
                                    metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.RevokeUserToken(admin_pb2.RevokeUserTokenRequest(token_id="nope"), metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "token_id" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:  # admin policy
        await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user_id))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rest_issues_tokens_that_rest_callers_use(admin, token_app):
    user_id = await new_user(admin)
    auth = {"authorization": "Bearer test-admin-token"}
    async with httpx.AsyncClient(base_url=f"http://{token_app.http_addr}", timeout=10) as http:
        created = await http.post(f"/admin/v1/users/{user_id}/tokens", json={"ttl_seconds": 120}, headers=auth)
        assert created.status_code == 200, created.text
        body = created.json()
        token = body["token"]
        assert set(body) >= {"token_id", "token", "issued_at", "expires_at"}
        evidence = await http.get("/instances/i-1/evidence", params={"nonce": "0" * 64},
                                  headers={"authorization": f"Bearer {token}"})
        assert evidence.status_code == 404  # authenticated; instance i-1 does not exist
        refused = await http.get("/instances/i-1/evidence", params={"nonce": "0" * 64},
                                 headers={"authorization": f"Bearer {token[:-2]}xx"})
        assert refused.status_code == 401


async def test_cli_issues_and_revokes_and_no_token_reaches_the_logs(admin, ch, token_app, capsys, caplog,
                                                                    monkeypatch):
    for name in ("GANTRY_ADMIN_TOKEN", "GANTRY_GRPC_ADDR"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    user_id = await new_user(admin)
    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "test-admin-token")  # never on the command line (`ps` shows it)
    common = ["--addr", token_app.grpc_addr]
    assert await admin_cli.amain([*common, "token", "create", user_id, "--ttl", "300", "--name", "ci", "--json"]) == 0
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert row["user_id"] == user_id and row["name"] == "ci" and err == ""
    assert (await call(ch, row["token"]))[0] == AUTHENTICATED

    assert await admin_cli.amain([*common, "token", "create", user_id]) == 0  # table output
    out, err = capsys.readouterr()
    assert "token_id" in out and "shown only this once" in err

    assert await admin_cli.amain([*common, "token", "revoke", row["token_id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"token_id": row["token_id"], "revoked": True}
    assert (await call(ch, row["token"]))[2] == "USER_TOKEN_REVOKED"
    assert await admin_cli.amain([*common, "token", "revoke", row["token_id"]]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert await admin_cli.amain([*common, "token", "create", user_id, "--ttl", "5"]) == 1
    assert "ttl_seconds" in capsys.readouterr().err
    assert row["token"] not in caplog.text and row["token"].split(".")[2] not in caplog.text
