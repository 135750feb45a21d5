"""`gantry miner ...` as a miner operator runs it, against a live server: the events an admin action publishes
(followed by a separate `gantry miner events` process), and the lists, stats and scores as JSON and tables."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from gantry_client import Signer
from gantry_server import admin_cli
from gantry_server.cli_tools import miner

pytestmark = pytest.mark.timeout(120)
TOKEN = "test-admin-token"  # conftest.make_settings


@pytest.fixture(autouse=True)
def _no_gantry_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("GANTRY_") or n == "MINER_SEED"]:
        monkeypatch.delenv(name)


@pytest.fixture
def seed() -> str:
    return os.urandom(32).hex()


@pytest.fixture
async def admin(app, clean_db, capsys, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)

    async def run(*argv: str) -> dict:
        code = await admin_cli.amain(["--addr", app.grpc_addr, "--token-file", str(token_file), *argv, "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)
    return run


@pytest.fixture
async def registered(admin, seed) -> Signer:
    signer = Signer.from_sr25519_seed(seed)
    await admin("metagraph", "upsert", "--hotkey", signer.hotkey, "--uid", "11")
    return signer


@pytest.fixture
def run(app, capsys, monkeypatch, seed):
    """`gantry miner ARGS` in this process, signed by the miner's seed from the environment."""
    monkeypatch.setenv("GANTRY_MINER_SEED", seed)

    async def run(*argv: str):
        code = await miner.amain(["--addr", app.grpc_addr, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


async def _image_and_chute(admin, tmp_path) -> tuple[str, str]:
    user = (await admin("user", "create", "--username", f"op-{os.urandom(4).hex()}"))["user_id"]
    await admin("image", "put", "img-miner-cli", "--user-id", user, "--name", "vllm", "--tag", "0.8.4")
    chute = tmp_path / "chute.json"
    chute.write_text(json.dumps({"user_id": user, "name": "llama <b>", "image_id": "img-miner-cli", "version": "v1",
                                 "node_selector": {"gpu_count": 1, "include": ["h100"]}}))
    await admin("chute", "put", "chute-miner-cli", "--file", str(chute))
    return user, "chute-miner-cli"


def _position(cursor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in cursor.split("-"))


async def _line(stream: asyncio.StreamReader, want) -> dict:
    """The next JSON line that `want` accepts (other events of the shared stream are skipped)."""
    while True:
        line = await asyncio.wait_for(stream.readline(), 60)
        assert line, "the events command ended"
        event = json.loads(line)
        if want(event):
            return event


async def test_events_follow_prints_what_an_admin_action_publishes_and_resumes_from_a_cursor(
        app, admin, registered, seed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    env.update(GANTRY_MINER_SEED=seed, GANTRY_GRPC_ADDR=app.grpc_addr)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gantry_server.cli", "miner", "events", "--follow", "--since", "0", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        user = (await admin("user", "create", "--username", f"op-{os.urandom(4).hex()}"))["user_id"]
        await admin("image", "put", "img-events", "--user-id", user, "--name", "vllm", "--tag", "1")
        created = await _line(proc.stdout, lambda e: e["data"].get("image_id") == "img-events")
        assert (created["reason"], created["message"]) == ("image_created", "image img-events created")
        assert created["created_at"].endswith("Z") and created["cursor"]

        await admin("image", "delete", "img-events")  # published while the command follows
        deleted = await _line(proc.stdout, lambda e: e["data"].get("image_id") == "img-events")
        assert deleted["reason"] == "image_deleted"
        assert _position(deleted["cursor"]) > _position(created["cursor"])
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 130  # Ctrl-C: says where to resume
    said = (await proc.stderr.read()).decode()
    assert f"resume with --since {deleted['cursor']}" in said and "Traceback" not in said

    # Resuming after the first event's cursor gives the second (and nothing before it), then stops when idle.
    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gantry_server.cli", "miner", "events", "--since", created["cursor"], "--json",
        "--reason", "image_deleted", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(replay.communicate(), 60)
    assert replay.returncode == 0, err
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert deleted in lines and all(e["reason"] == "image_deleted" for e in lines)


async def test_chutes_and_jobs_as_json_and_as_a_table(admin, registered, run, tmp_path):
    user, chute_id = await _image_and_chute(admin, tmp_path)
    job = await admin("job", "create", "--chute-id", chute_id, "--user-id", user, "--method", "train")

    code, out, err = await run("chutes", "--json")
    assert (code, err) == (0, "")
    [chute] = [c for c in json.loads(out)["chutes"] if c["chute_id"] == chute_id]
    assert (chute["name"], chute["version"], chute["disabled"]) == ("llama <b>", "v1", False)

    code, out, _ = await run("chutes")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["chute", "name", "version"]
    assert any(r.startswith(chute_id) and "llama <b>" in r for r in rows)  # plain text, shown as written

    code, out, _ = await run("jobs", "--json")
    assert code == 0 and [j["job_id"] for j in json.loads(out)["jobs"]] == [job["job_id"]]
    code, out, _ = await run("jobs")
    assert code == 0 and job["job_id"] in out and "train" in out


async def test_stats_scores_and_servers_answer_for_the_own_hotkey(registered, run):
    code, out, _ = await run("stats", "--json")
    assert code == 0 and set(json.loads(out)) == {"past_hour", "past_day", "all"}
    code, out, _ = await run("scores", "--json")
    assert code == 0 and set(json.loads(out)) == {"raw_values", "final_scores"}
    code, out, _ = await run("servers", "--json")
    assert (code, json.loads(out)) == (0, {"servers": []})
    code, out, err = await run("servers")
    assert (code, out) == (0, "") and err == "gantry miner: no servers registered for this hotkey\n"


async def test_who_may_ask_and_what_the_refusals_say(clean_db, run, monkeypatch, tmp_path):
    code, out, err = await run("chutes")  # a valid key, not on the metagraph
    assert (code, out) == (1, "") and err == "gantry miner: UNAUTHENTICATED: Hotkey is not registered on netuid 64\n"

    monkeypatch.delenv("GANTRY_MINER_SEED")
    code, _, err = await run("chutes")
    assert code == 2 and "no hotkey" in err
    code, out, _ = await run("scores", "--all", "--json")  # public: no key needed
    assert code == 0 and "final_scores" in json.loads(out)
    code, _, err = await run("stats")
    assert code == 2 and "--hotkey SS58 or --all" in err

    hotkey_file = tmp_path / "hotkey"  # a bittensor hotkey file whose address is of another key type
    seed = os.urandom(32).hex()
    hotkey_file.write_text(json.dumps({"secretSeed": "0x" + seed,
                                       "ss58Address": Signer.from_ed25519_seed(seed).hotkey}))
    code, _, err = await run("chutes", "--hotkey-file", str(hotkey_file))
    assert code == 2 and "--key-type?" in err
    code, _, err = await run("chutes", "--hotkey-file", str(hotkey_file), "--key-type", "ed25519")
    assert code == 1 and "not registered" in err  # the file's key, signed as ed25519: it got to the server
