"""Miner-facing rows built from database rows (domain/miner/rows.py): what a miner reads of a chute, a job, a GPU
model, and whether a chute takes another instance."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gantry_server.domain.miner import rows
from gantry_server.store.repositories.instances import ChuteCounts

NOW = datetime(2026, 3, 2, tzinfo=timezone.utc)


def chute(**kw) -> dict:
    return dict(chute_id="c-1", user_id="u-1", name="llm", image_id="img-1", public=True, standard_template=None,
                version="v1", chutes_version="0.4.9", concurrency=None, boost=None, created_at=NOW, updated_at=NOW,
                max_instances=None, shutdown_after_seconds=None, allow_external_egress=False, encrypted_fs=False,
                tee=False, disabled=False, bounty=None, code="", filename="llm.py", ref_str="", lock_modules=None,
                node_selector={"include": ["h100"]}, cords=[], jobs=[], preemptible=False) | kw


def chute_row(**kw) -> dict:
    return rows.chute_row(chute(**kw), image_owner="Owner", image_name="VLLM", image_tag="1.0",
                          image_patch_version="initial")


def test_a_chute_without_gpu_count_shows_the_one_gpu_it_gets():
    row = chute_row()
    assert row["node_selector"]["gpu_count"] == 1
    assert row["node_selector"]["compute_multiplier"] == pytest.approx(0.5)  # h100: 2.50 / 5.00
    assert row["image"] == "owner/vllm:1.0"  # an "initial" patch adds nothing
    assert row["ref_str"] == "llm:chute"


def test_public_boost_applies_and_tee_multiplies_the_starting_multiplier():
    assert chute_row(boost=2.0, tee=True)["effective_compute_multiplier"] == pytest.approx(0.5 * 2.0 * 2.25)
    private = chute_row(public=False, boost=2.0, tee=True)
    assert private["effective_compute_multiplier"] == pytest.approx(0.5 * 1.3 * 2.25)  # no boost when private
    assert private["preemptible"] is False
    assert chute_row(public=False, preemptible=True)["preemptible"] is True


def test_lock_modules_follows_the_standard_template_unless_given():
    assert chute_row()["lock_modules"] is False
    assert chute_row(standard_template="vllm")["lock_modules"] is True
    assert chute_row(standard_template="vllm", lock_modules=False)["lock_modules"] is False


def test_cords_keep_only_known_keys_of_the_right_type():
    row = chute_row(cords=[{"method": "POST", "path": "/x", "stream": "yes", "input_schema": {"type": "object"},
                            "other": 1}, "not a cord"])
    assert row["cords"] == [{"method": "POST", "path": "/x", "input_schema": {"type": "object"}}]


def test_a_job_row_names_its_chutes_version_and_starts_at_the_private_rate_without_its_own_multiplier():
    job = dict(job_id="j-1", user_id="u-1", chute_id="c-1", method="train", miner_uid=None, miner_hotkey=None,
               miner_coldkey=None, instance_id=None, created_at=NOW, started_at=None, finished_at=None,
               job_args={}, status="pending", error_detail=None, miner_terminated=False, miner_history=["5F"],
               compute_multiplier=None, port_mappings=[{"secret": True}])
    row = rows.job_row(job, chute())
    assert row["version"] == "v1" and row["chutes_version"] == "0.4.9" and row["miner_history"] == ["5F"]
    assert row["compute_multiplier"] == pytest.approx(0.5 * 2.0)
    assert "port_mappings" not in row


def test_a_chute_at_its_target_or_disabled_is_not_scalable():
    counts = ChuteCounts(total=2, active=2, live=2, hotkey=0)
    assert rows.utilization_row(chute(), counts, 2, update_in_progress=False)["scalable"] is False
    assert rows.utilization_row(chute(), counts, 3, update_in_progress=False)["scalable"] is True
    assert rows.utilization_row(chute(), counts, None, update_in_progress=False)["scalable"] is True
    assert rows.utilization_row(chute(disabled=True), counts, None, update_in_progress=True)["scalable"] is False


def test_supported_gpus_weigh_the_most_expensive_model_at_one():
    gpus = rows.supported_gpus()
    assert max(g["compute_multiplier"] for g in gpus.values()) == 1.0
    assert all(key == g["identifier"] for key, g in gpus.items())
