"""What an operator and a miner see: `gantry admin ...` against a live server, and calls signed by gantry_client.

RPCs whose handler is not built yet answer UNIMPLEMENTED once auth lets the caller through, so UNIMPLEMENTED
below means "authenticated". Every hotkey is fresh per test (the server caches metagraph rows for 5 s).
"""
from __future__ import annotations

import json
import os

import grpc
import pytest

from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_client import Signer, connect
from gantry_server import admin_cli, cli

TOKEN = "test-admin-token"  # conftest.make_settings
EVIDENCE = instances_pb2.GetTeeInstanceEvidenceRequest(instance_id="inst-1", nonce="ab" * 32)  # policy `user`


@pytest.fixture(autouse=True)
def _no_gantry_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("GANTRY_")]:
        monkeypatch.delenv(name)


@pytest.fixture
async def admin(app, clean_db, capsys, tmp_path_factory):
    """Run `gantry admin ARGS --json` against the test server: (exit code, parsed stdout, stderr)."""
    token_file = tmp_path_factory.mktemp("admin-token") / "token"

    async def run(*argv: str, json_out: bool = True, addr: str | None = app.grpc_addr, token: str | None = TOKEN):
        if token:
            token_file.write_text(token)
        common = [*(["--addr", addr] if addr else []), *(["--token-file", str(token_file)] if token else [])]
        code = await admin_cli.amain([*common, *argv, *(["--json"] if json_out else [])])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if json_out and code == 0 else out), err
    return run


def fresh_signer() -> Signer:
    return Signer.from_ed25519_seed(os.urandom(32))


async def _code(call, request, metadata=()) -> tuple[grpc.StatusCode, str]:
    try:
        await call(request, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_created_api_key_authenticates_until_revoked(admin, app):
    code, user, err = await admin("user", "create", "--username", "ops-alice")
    assert (code, err) == (0, "")
    assert len(user["user_id"]) == 36 and user["username"] == "ops-alice"

    code, key, _ = await admin("apikey", "create", user["user_id"], "--name", "laptop")
    assert code == 0 and key["secret_key"].startswith("cpk_") and key["name"] == "laptop"

    async with grpc.aio.insecure_channel(app.grpc_addr) as channel:
        evidence = instances_pb2_grpc.InstanceServiceStub(channel).GetTeeInstanceEvidence
        bearer = (("authorization", f"Bearer {key['secret_key']}"),)
        assert (await _code(evidence, EVIDENCE, bearer))[0] == grpc.StatusCode.NOT_FOUND  # no instance inst-1
        assert (await _code(evidence, EVIDENCE))[0] == grpc.StatusCode.UNAUTHENTICATED

        code, revoked, _ = await admin("apikey", "revoke", key["api_key_id"])
        assert (code, revoked) == (0, {"api_key_id": key["api_key_id"], "revoked": True})
        code, details = await _code(evidence, EVIDENCE, bearer)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details


async def test_table_output_shows_the_secret_once_and_says_so(admin):
    _, user, _ = await admin("user", "create", "--username", "ops-bob")
    code, out, err = await admin("apikey", "create", user["user_id"], json_out=False)
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["secret_key"].startswith("cpk_") and rows["user_id"] == user["user_id"] and out.count("cpk_") == 1
    assert "shown only this once" in err


async def test_server_refusals_are_one_line_with_the_grpc_code_and_exit_1(admin):
    code, out, err = await admin("apikey", "revoke", "00000000-0000-0000-0000-000000000000")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("gantry admin: NOT_FOUND: no live API key 00000000-")

    code, _, err = await admin("user", "create", "--username", "x", token="wrong")
    assert code == 1 and err.startswith("gantry admin: UNAUTHENTICATED: admin token is not valid")

    code, _, err = await admin("metagraph", "upsert", "--hotkey", "nope", "--uid", "1")
    assert code == 1 and err.startswith("gantry admin: INVALID_ARGUMENT:") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ("apikey",), ("user", "create"), ("metagraph", "upsert", "--hotkey", "h", "--uid", "one"),
    ("blacklist", "set", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", " "), ("nope",),
])
async def test_usage_errors_are_one_line_and_exit_2(admin, argv):
    code, out, err = await admin(*argv)
    assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("gantry admin: ")


async def test_token_and_address_come_from_the_environment_or_the_data_dir(admin, app, monkeypatch, tmp_path):
    monkeypatch.setenv("GANTRY_GRPC_ADDR", app.grpc_addr)
    monkeypatch.setenv("GANTRY_DATA_DIR", str(tmp_path))
    code, _, err = await admin("user", "create", "--username", "env-1", addr=None, token=None)
    assert code == 2 and "no admin token" in err and str(tmp_path / "admin_token") in err

    (tmp_path / "admin_token").write_text(TOKEN + "\n")  # as the embedded default keeps it
    assert (await admin("user", "create", "--username", "env-2", addr=None, token=None))[0] == 0

    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "wrong")  # the environment wins over the file
    code, _, err = await admin("user", "create", "--username", "env-3", addr=None, token=None)
    assert code == 1 and "UNAUTHENTICATED" in err


async def test_grpc_v1_signed_calls_pass_auth_for_a_registered_hotkey_only(admin, app):
    miner, stranger = fresh_signer(), fresh_signer()
    code, node, _ = await admin("metagraph", "upsert", "--hotkey", miner.hotkey, "--uid", "7")
    assert (code, node) == (0, {"hotkey": miner.hotkey, "uid": 7, "netuid": 64, "upserted": 1})

    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    async with connect(app.grpc_addr, signer=miner) as channel:
        stub = miner_pb2_grpc.MinerServiceStub(channel)
        for _ in range(2):  # a fresh single-use nonce per call
            code, details = await _code(stub.ReleaseJob, request)
            assert code == grpc.StatusCode.NOT_FOUND, details  # the handler ran: no such job
        stream = stub.WatchEvents(miner_pb2.WatchEventsRequest())  # server streaming: signed too
        first = await stream.read()
        assert first.heartbeat and not first.cursor  # the opening heartbeat: the stream got past auth
        stream.cancel()

    async with connect(app.grpc_addr, signer=stranger) as channel:
        code, details = await _code(miner_pb2_grpc.MinerServiceStub(channel).ReleaseJob, request)
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "Hotkey is not registered on netuid 64")

    async with connect(app.grpc_addr) as channel:  # unsigned
        code, _ = await _code(miner_pb2_grpc.MinerServiceStub(channel).ReleaseJob, request)
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_blacklisted_hotkey_is_refused_with_the_reason_and_can_be_cleared(admin, app):
    miner = fresh_signer()
    await admin("metagraph", "upsert", "--hotkey", miner.hotkey, "--uid", "8")
    code, row, _ = await admin("blacklist", "set", miner.hotkey, "weight copying")
    assert (code, row) == (0, {"hotkey": miner.hotkey, "blacklist_reason": "weight copying"})
    async with connect(app.grpc_addr, signer=miner) as channel:
        code, details = await _code(miner_pb2_grpc.MinerServiceStub(channel).ReleaseJob,
                                    miner_pb2.ReleaseJobRequest(job_id="job-1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "weight copying" in details

    code, row, _ = await admin("blacklist", "clear", miner.hotkey)
    assert (code, row) == (0, {"hotkey": miner.hotkey, "blacklist_reason": None})


async def test_admin_token_via_connect_reaches_admin_rpcs(app, clean_db):
    from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

    async with connect(app.grpc_addr, admin_token=TOKEN) as channel:
        response = await admin_pb2_grpc.AdminServiceStub(channel).CreateUser(
            admin_pb2.CreateUserRequest(username="via-connect"))
    assert response.user_id


def test_gantry_admin_is_a_subcommand_of_gantry(capsys):
    assert cli.main(["admin", "--help"]) == 0
    assert "usage: gantry admin" in capsys.readouterr().out
    assert cli.main(["admin", "blacklist"]) == 2
    assert capsys.readouterr().err.startswith("gantry admin: ")


# -- images, chutes and jobs ---------------------------------------------------------------------------------------
async def _db_rows(engine, sql: str) -> list[dict]:
    from sqlalchemy import text

    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql))).mappings()]


async def test_an_operator_registers_an_image_and_a_chute_posts_jobs_retires_and_deletes_it(admin, clean_db,
                                                                                            tmp_path):
    _, user, _ = await admin("user", "create", "--username", "ops-chutes")
    user_id = user["user_id"]
    code, image, err = await admin("image", "put", "img-cli", "--user-id", user_id, "--name", "vllm",
                                   "--tag", "0.8.4", "--patch-version", "p1", "--chutes-version", "0.4.9")
    assert (code, image, err) == (0, {"image_id": "img-cli", "created": True}, "")
    assert (await _db_rows(clean_db, "SELECT chutes_version FROM images"))[0]["chutes_version"] == "0.4.9"

    chute_file = tmp_path / "chute.json"
    chute_file.write_text(json.dumps({
        "chute_id": "overridden", "user_id": user_id, "name": "llama", "image_id": "img-cli", "version": "v1",
        "chutesVersion": "0.4.9", "node_selector": {"gpu_count": 2, "include": ["h100"]},
        "jobs": [{"name": "train"}], "shutdown_after_seconds": 600}))
    code, chute, _ = await admin("chute", "put", "chute-cli", "--file", str(chute_file))
    assert (code, chute) == (0, {"chute_id": "chute-cli", "created": True, "disabled": False})
    [row] = await _db_rows(clean_db, "SELECT * FROM chutes")
    assert (row["chute_id"], row["chutes_version"], row["node_selector"], row["shutdown_after_seconds"]) == (
        "chute-cli", "0.4.9", {"gpu_count": 2, "include": ["h100"]}, 600)

    code, job, _ = await admin("job", "create", "--chute-id", "chute-cli", "--user-id", user_id, "--method", "train",
                               "--args", '{"steps": 3}', "--port", "rpc:9000", "--port", "media:5004/udp")
    assert code == 0 and (job["chute_id"], job["method"]) == ("chute-cli", "train")
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"job_id": "job-file", "chute_id": "chute-cli", "user_id": user_id,
                                    "method": "eval", "compute_multiplier": 1.5}))
    code, second, _ = await admin("job", "create", "--file", str(job_file))
    assert (code, second) == (0, {"job_id": "job-file", "chute_id": "chute-cli", "method": "eval"})
    by_id = {r["job_id"]: r for r in await _db_rows(clean_db, "SELECT * FROM jobs")}
    assert by_id[job["job_id"]]["job_args"] == {"steps": 3}
    assert by_id[job["job_id"]]["ports"] == [{"name": "rpc", "port": 9000, "proto": "tcp"},
                                             {"name": "media", "port": 5004, "proto": "udp"}]
    assert by_id["job-file"]["compute_multiplier"] == 1.5

    code, offered, _ = await admin("chute", "bounty", "chute-cli", "500")
    assert (code, offered) == (0, {"chute_id": "chute-cli", "bounty": 500})
    assert (await _db_rows(clean_db, "SELECT bounty FROM chutes"))[0]["bounty"] == 500
    code, withdrawn, _ = await admin("chute", "bounty", "chute-cli", "0")
    assert (code, withdrawn) == (0, {"chute_id": "chute-cli", "bounty": None})

    code, retired, _ = await admin("chute", "put", "chute-cli", "--file", str(chute_file), "--disabled")
    assert (code, retired) == (0, {"chute_id": "chute-cli", "created": False, "disabled": True})
    assert (await _db_rows(clean_db, "SELECT disabled FROM chutes"))[0]["disabled"] is True

    code, deleted, _ = await admin("chute", "delete", "chute-cli")
    assert (code, deleted) == (0, {"chute_id": "chute-cli", "deleted": True})
    assert await _db_rows(clean_db, "SELECT chute_id FROM chutes UNION ALL SELECT job_id FROM jobs") == []
    code, image_gone, _ = await admin("image", "delete", "img-cli")
    assert (code, image_gone) == (0, {"image_id": "img-cli", "deleted": True})
    assert await _db_rows(clean_db, "SELECT image_id FROM images") == []


@pytest.mark.parametrize(("content", "extra", "says"), [
    ('{"chute_id": "c", "gpu_count": 2}', (), "unknown field(s) gpu_count"),
    ("{not json", (), "is not JSON"),
    ('[{"chute_id": "c"}]', (), "one JSON object"),
    ('{"public": "yes"}', (), "public"),
    (None, (), "cannot read"),
])
async def test_a_bad_chute_file_is_a_usage_error_naming_the_problem(admin, tmp_path, content, extra, says):
    path = tmp_path / "chute.json"
    if content is not None:
        path.write_text(content)
    code, out, err = await admin("chute", "put", "--file", str(path), *extra)
    assert (code, out) == (2, "") and err.count("\n") == 1 and says in err


@pytest.mark.parametrize("argv", [
    ("job", "create", "--port", "9000"), ("job", "create", "--port", "rpc:x/tcp"), ("job", "create", "--args", "[1]"),
    ("chute", "put", "c"), ("chute", "put", "c", "--file", "f", "--disabled", "--enabled"),
    ("image", "put", "img", "--user-id", "u", "--name", "n", "--tag", "t", "--compute-type", "tpu"),
    ("chute", "bounty", "c"), ("chute", "bounty", "c", "lots"), ("chute", "bounty", "c", "99999999999"),
    ("image", "delete"),
])
async def test_bad_chute_image_and_job_command_lines_exit_2(admin, argv):
    code, out, err = await admin(*argv)
    assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("gantry admin: ")


async def test_server_refusals_of_chute_commands_name_the_field(admin, tmp_path):
    _, user, _ = await admin("user", "create", "--username", "ops-refused")
    await admin("image", "put", "img-r", "--user-id", user["user_id"], "--name", "vllm", "--tag", "1")
    path = tmp_path / "chute.json"
    path.write_text(json.dumps({"user_id": user["user_id"], "name": "c", "image_id": "img-r", "version": "v1",
                                "node_selector": {"gpu_count": 0}}))
    code, _, err = await admin("chute", "put", "chute-r", "--file", str(path))
    assert code == 1 and err.startswith("gantry admin: INVALID_ARGUMENT: node_selector.gpu_count: ")
    code, _, err = await admin("chute", "delete", "chute-r")
    assert (code, err) == (1, "gantry admin: NOT_FOUND: no chute chute-r\n")
    code, _, err = await admin("chute", "bounty", "chute-r", "5")
    assert (code, err) == (1, "gantry admin: NOT_FOUND: chute_id: no chute chute-r\n")
    code, _, err = await admin("chute", "bounty", "chute-r", "2000000")
    assert code == 1 and err.startswith("gantry admin: INVALID_ARGUMENT: bounty: must be 0..1,000,000")
    code, _, err = await admin("image", "delete", "img-404")
    assert (code, err) == (1, "gantry admin: NOT_FOUND: image_id: no image img-404\n")
    code, _, err = await admin("job", "create", "--chute-id", "chute-r", "--user-id", user["user_id"],
                               "--method", "train", "--port", "api:8000")
    assert code == 1 and "ports[0].port: 8000 is reserved" in err
