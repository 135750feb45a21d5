"""Rows miners read (GET /miner/chutes/, images, nodes, instances, jobs, ...) built from database rows.

Pure functions: a database row (a mapping) in, a dict keyed by the field names of the miner-facing message out
(gantry.miner.v1), with None for a value that is not there. The service turns the dict into the message; the
field names are the legacy JSON keys a stock miner reads (../shared/docs/miner-contract.md A1-A8).

    >>> default_ref_str("my_chute.py")
    'my_chute:chute'
    >>> image_row({"image_id": "i", "user_id": "u", "name": "VLLM", "tag": "0.9", "patch_version": None,
    ...            "compute_type": "gpu", "chutes_version": "0.4.9", "created_at": None}, "Alice")["username"]
    'alice'
"""
from __future__ import annotations

from typing import Any, Mapping

from ..launch import gpus as gpu_models
from ..launch import scaling
from ..launch.launcher import starting_multiplier
from .jobs import job_compute_multiplier
from .reference import gpu_count, image_reference

# Gantry registers only images that are already built and pushed (AdminService.UpsertImage names a pullable
# image; there is no build pipeline here), so every image a miner sees has the reference's final build status.
IMAGE_STATUS = "built and pushed"

# Chute columns a row carries as they are (the rest of the Chute message is computed below, or has no column in
# Gantry and keeps its default: tagline, readme, slug, revision, openrouter, discount, invocation_count, ...).
_CHUTE_COLUMNS = ("chute_id", "user_id", "name", "image_id", "public", "standard_template", "version",
                  "chutes_version", "concurrency", "boost", "created_at", "updated_at", "max_instances",
                  "shutdown_after_seconds", "allow_external_egress", "encrypted_fs", "tee", "disabled", "bounty",
                  "code", "filename")
_NODE_COLUMNS = ("uuid", "name", "memory", "major", "minor", "processors", "sxm", "clock_rate",
                 "max_threads_per_processor", "concurrent_kernels", "ecc", "miner_hotkey", "server_id",
                 "gpu_identifier", "device_index", "seed", "verification_host", "verification_port", "verified_at",
                 "verification_error", "created_at")
# What a miner may see of its instance: never host, port, port_mappings, the symmetric key or rint_* columns.
INSTANCE_COLUMNS = ("instance_id", "chute_id", "version", "chutes_version", "config_id", "deployment_id",
                    "server_id", "miner_uid", "miner_hotkey", "miner_coldkey", "region", "active", "verified",
                    "created_at", "activated_at", "last_verified_at", "verification_error", "consecutive_failures",
                    "billed_to", "stop_billing_at", "hourly_rate", "compute_multiplier", "bounty", "cacert", "extra")
# Job columns shown as they are; port_mappings is never sent.
_JOB_COLUMNS = ("job_id", "user_id", "chute_id", "method", "miner_uid", "miner_hotkey", "miner_coldkey",
                "instance_id", "created_at", "started_at", "finished_at", "job_args", "status", "error_detail",
                "miner_terminated")
_SERVER_GPU_COLUMNS = ("uuid", "gpu_identifier", "device_index", "verified_at", "verification_error")

# A cord (chutes.cords is free-form JSON): the keys a Cord carries, by the type each must have.
_CORD_TEXT = ("method", "path", "function", "public_api_path", "public_api_method", "output_content_type")
_CORD_FLAGS = ("stream", "passthrough")
_CORD_SCHEMAS = ("input_schema", "output_schema", "minimal_input_schema")


def default_ref_str(filename: str) -> str:
    """What a chute runs when none was given: "{module}:chute", the module being the file name without .py."""
    return f"{filename.removesuffix('.py')}:chute"


def cord_row(raw: Any) -> dict | None:
    """One stored cord as a Cord: only its known keys with values of the right type (None if not an object)."""
    if not isinstance(raw, Mapping):
        return None
    row: dict[str, Any] = {k: raw[k] for k in _CORD_TEXT if isinstance(raw.get(k), str)}
    row.update({k: raw[k] for k in _CORD_FLAGS if isinstance(raw.get(k), bool)})
    row.update({k: raw[k] for k in _CORD_SCHEMAS if isinstance(raw.get(k), Mapping)})
    return row


def chute_row(chute: Mapping, *, image_owner: str, image_name: str, image_tag: str,
              image_patch_version: str | None) -> dict:
    """The Chute of GET /miner/chutes/ and GET /miner/chutes/{chute_id}/{version} (reference §6.12).

    `node_selector` gains `gpu_count` (when it was left to its default), `compute_multiplier` (GPU count times the
    cheapest supported GPU's weight) and `supported_gpus`; `preemptible` is the column or public;
    `effective_compute_multiplier` is what a new instance would start at."""
    selector = dict(chute["node_selector"] or {})
    gpus = gpu_count(selector)
    supported = [m.identifier for m in gpu_models.supported(selector)]
    private = not chute["public"]
    value, _, base = starting_multiplier(chute, gpus, private=private, job=None)
    selector.update(gpu_count=gpus, compute_multiplier=base, supported_gpus=supported)
    row = {k: chute[k] for k in _CHUTE_COLUMNS}
    lock_modules = chute["lock_modules"]
    row.update(
        image=image_reference(image_owner, image_name, image_tag, image_patch_version),
        ref_str=chute["ref_str"] or default_ref_str(chute["filename"] or ""),
        node_selector=selector,
        supported_gpus=supported,
        # absent: true when a standard template is set (AdminService.UpsertChute)
        lock_modules=lock_modules if lock_modules is not None else chute["standard_template"] is not None,
        cords=[c for c in (cord_row(raw) for raw in chute["cords"] or []) if c is not None],
        jobs=chute["jobs"],
        preemptible=bool(chute["preemptible"] or chute["public"]),
        effective_compute_multiplier=value,
        compute_multiplier_factors={"base": base, "gpu_count": gpus, "private": private, "tee": chute["tee"],
                                    "boost": chute["boost"]},
    )
    return row


def image_row(image: Mapping, owner_username: str) -> dict:
    """The Image of GET /miner/images/: owner, name and tag lowercased (what the image reference is made of)."""
    return dict(image_id=image["image_id"], user_id=image["user_id"], username=owner_username.lower(),
                name=image["name"].lower(), tag=image["tag"].lower(), status=IMAGE_STATUS,
                patch_version=image["patch_version"], compute_type=image["compute_type"],
                created_at=image["created_at"], chutes_version=image["chutes_version"])


def node_row(node: Mapping) -> dict:
    """The Node of GET /miner/nodes/ (one GPU of the caller)."""
    return {k: node[k] for k in _NODE_COLUMNS}


def instance_row(instance: Mapping) -> dict:
    """The MinerInstance of GET /miner/instances/: the whitelisted columns only."""
    return {k: instance[k] for k in INSTANCE_COLUMNS}


def job_row(job: Mapping, chute: Mapping) -> dict:
    """The Job of GET /miner/jobs/: the job with its chute's version, and the multiplier it would start at."""
    row = {k: job[k] for k in _JOB_COLUMNS}
    row.update(version=chute["version"], chutes_version=chute["chutes_version"],
               miner_history=list(job["miner_history"] or []),
               compute_multiplier=job_compute_multiplier(job, chute))
    return row


def server_row(server: Mapping, gpus: list[Mapping]) -> dict:
    """A MinerServer of GET /miner/servers/ with its GPUs (possibly none)."""
    return dict(server_id=server["server_id"], name=server["name"], ip=server["ip"], is_tee=server["is_tee"],
                version=server["version"], maintenance_pending=server["maintenance_pending_window_id"] is not None,
                created_at=server["created_at"], updated_at=server["updated_at"],
                gpus=[{k: g[k] for k in _SERVER_GPU_COLUMNS} for g in gpus])


def utilization_row(chute: Mapping, counts, target_count: int | None, *, update_in_progress: bool) -> dict:
    """A ChuteUtilization of GET /chutes/utilization: `scalable` when the chute is enabled and another instance
    would pass the scaling gates now (`counts`: store.repositories.instances.ChuteCounts)."""
    return dict(chute_id=chute["chute_id"], name=chute["name"],
                scalable=not chute["disabled"] and not scaling.at_capacity(chute, counts, target_count),
                update_in_progress=update_in_progress, instance_count=counts.total,
                active_instance_count=counts.active, target_count=target_count)


def supported_gpus() -> dict[str, dict]:
    """GET /nodes/supported: every GPU model instances may run on, keyed by its short reference."""
    return {m.identifier: dict(identifier=m.identifier, hourly_rate=m.hourly_rate,
                               compute_multiplier=gpu_models.compute_multiplier(m.identifier))
            for m in gpu_models.MODELS.values()}
