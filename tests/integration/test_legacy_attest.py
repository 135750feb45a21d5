"""The legacy TEE `/attest` (POST /instances/launch_config/{config_id}/attest) over REST: a chute on a TEE VM older
than 0.2.0 claims, proves its GPUs with evidence bound to a `boot` nonce and is verified in one call.

The world is test_launch_configs' (GPUs of a TDX server registered through the real flow) with a GPU-evidence
verifier command that also takes the per-GPU list this endpoint posts: every object must carry the validator's
nonce.
"""
from __future__ import annotations

import sys

import pytest

from gantry_server.config import LaunchSettings
from gantry_server.store.models import instances, launch_configs

from .servers_harness import servers_world
from .test_launch_configs import MATRIX_N, launch_config, rows, w  # noqa: F401

# Server registration posts one nvtrust document, /attest a list of per-GPU objects: each must echo the nonce.
LIST_GPU_VERIFIER = (sys.executable, "-c", "import json,sys; d=json.load(sys.stdin); e=json.loads(d['evidence']); "
                     "e=e if isinstance(e, list) else [e]; "
                     "sys.exit(0 if e and all(i.get('nonce') == d['nonce'] for i in e) "
                     "else 'GPU evidence is not bound to the nonce')")


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("attest"),
                             launch=LaunchSettings(graval_matrix_n=MATRIX_N),
                             gpu_evidence_verifier=LIST_GPU_VERIFIER) as w:
        yield w


def body(gpu_nonce: str) -> dict:
    return {"gpus": [{"uuid": "GPU-0000"}, {"uuid": "GPU-0001"}], "host": "127.0.0.1", "env": "encrypted-env",
            "port_mappings": [{"proto": "tcp", "internal_port": 8000, "external_port": 32000},
                              {"proto": "tcp", "internal_port": 8001, "external_port": 32001}],
            "gpu_evidence": [{"nonce": gpu_nonce, "certificate": "c0", "evidence": "e0"},
                             {"nonce": gpu_nonce, "certificate": "c1", "evidence": "e1"}]}


async def attest(w, issued, nonce: str, gpu_nonce: str | None = None):
    return await w.http.post(f"/instances/launch_config/{issued.config_id}/attest", json=body(gpu_nonce or nonce),
                             headers={"Authorization": f"Bearer {issued.token}", "X-Chutes-Nonce": nonce})


async def boot_nonce(w) -> str:
    return (await w.http.get("/servers/nonce")).json()["nonce"]


async def test_attest_claims_verifies_and_answers_the_key_with_the_verified_payload(w):
    issued = await launch_config(w, "chute-tee")
    answer = await attest(w, issued, await boot_nonce(w))
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    [instance] = await rows(w, instances)
    assert payload["instance_id"] == instance["instance_id"] and payload["chute_id"] == "chute-tee"
    assert len(payload["symmetric_key"]) == 32 and payload["verified_at"]
    assert payload["activation_url"].endswith(f"/instances/launch_config/{issued.config_id}/activate")
    assert instance["verified"] and not instance["active"]
    activated = await w.http.get(f"/instances/launch_config/{issued.config_id}/activate",
                                 headers={"Authorization": f"Bearer {issued.token}"})
    assert activated.status_code == 200 and activated.json() == {"ok": True}
    [instance] = await rows(w, instances)
    assert instance["active"]


async def test_gpu_evidence_bound_to_another_nonce_is_refused_and_frees_the_gpus(w):
    issued = await launch_config(w, "chute-tee")
    answer = await attest(w, issued, await boot_nonce(w), gpu_nonce="ff" * 32)
    assert answer.status_code == 403, answer.text
    assert "GPU evidence refused: GPU evidence is not bound to the nonce" in answer.json()["detail"]
    assert await rows(w, instances) == []
    [config] = await rows(w, launch_configs)
    assert config["failed_at"] is not None and "TEE attestation failed" in config["verification_error"]


async def test_attest_needs_a_boot_nonce_and_gpu_evidence(w):
    issued = await launch_config(w, "chute-tee")
    instance_nonce = (await w.http.get("/instances/nonce")).json()
    wrong_purpose = await attest(w, issued, instance_nonce)
    assert wrong_purpose.status_code == 401, wrong_purpose.text
    no_evidence = await w.http.post(f"/instances/launch_config/{issued.config_id}/attest",
                                    json={**body("00"), "gpu_evidence": []},
                                    headers={"Authorization": f"Bearer {issued.token}",
                                             "X-Chutes-Nonce": await boot_nonce(w)})
    assert no_evidence.status_code == 422 and "gpu_evidence" in no_evidence.text
    assert await rows(w, instances) == []
