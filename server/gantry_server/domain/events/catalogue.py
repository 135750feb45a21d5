"""Every event Gantry announces to miners: reason, recipients and payload, in one place.

A producer builds its event here and hands it to `publish(conn, event)` inside the transaction that makes the
change, so the event exists exactly when the change does (see outbox in docs/miner.md). Payload keys are what a
stock miner reads (../shared/docs/miner-contract.md §b); `validator` is added by the miner itself, never sent.

| reason             | recipients | data                                                                     |
|--------------------|------------|--------------------------------------------------------------------------|
| chute_created      | all        | chute_id, version, job_only                                              |
| chute_updated      | all        | chute_id, version, job_only                                              |
| chute_deleted      | all        | chute_id, version                                                        |
| bounty_change      | all        | chute_id, bounty                                                         |
| image_created      | all        | image_id                                                                 |
| image_updated      | all        | image_id, short_tag, patch_version, chutes_version, chute_ids, image     |
| image_deleted      | all        | image_id                                                                 |
| job_created        | all        | job_id, method, chute_id, image_id, gpu_count, compute_multiplier,       |
|                    |            | exclude, excluded, disk_gb                                               |
| job_deleted        | all        | instance_id, job_id                                                      |
| instance_created   | owner      | chute_id, gpu_count, gpu_model_name, miner_hotkey, instance_id, config_id|
| instance_verified  | owner      | instance_id, miner_hotkey                                                |
| instance_activated | owner      | chute_id, miner_hotkey, instance_id, config_id                           |
| instance_deleted   | owner      | chute_id, miner_hotkey, instance_id, config_id                           |
| rolling_update     | owner      | chute_id, instance_id, miner_hotkey, old_version, new_version, reason    |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..miner.reference import job_disk_gb


@dataclass(frozen=True)
class Event:
    """One announcement. `recipients` None: every authenticated miner; otherwise only these hotkeys."""

    reason: str
    data: dict[str, Any]
    message: str | None = None
    recipients: tuple[str, ...] | None = None


# reason -> (recipients "all" | "owner", payload keys in order). Tests check every builder against this table.
CATALOGUE: dict[str, tuple[str, tuple[str, ...]]] = {
    "chute_created": ("all", ("chute_id", "version", "job_only")),
    "chute_updated": ("all", ("chute_id", "version", "job_only")),
    "chute_deleted": ("all", ("chute_id", "version")),
    "bounty_change": ("all", ("chute_id", "bounty")),
    "image_created": ("all", ("image_id",)),
    "image_updated": ("all", ("image_id", "short_tag", "patch_version", "chutes_version", "chute_ids", "image")),
    "image_deleted": ("all", ("image_id",)),
    "job_created": ("all", ("job_id", "method", "chute_id", "image_id", "gpu_count", "compute_multiplier",
                            "exclude", "excluded", "disk_gb")),
    "job_deleted": ("all", ("instance_id", "job_id")),
    "instance_created": ("owner", ("chute_id", "gpu_count", "gpu_model_name", "miner_hotkey", "instance_id",
                                   "config_id")),
    "instance_verified": ("owner", ("instance_id", "miner_hotkey")),
    "instance_activated": ("owner", ("chute_id", "miner_hotkey", "instance_id", "config_id")),
    "instance_deleted": ("owner", ("chute_id", "miner_hotkey", "instance_id", "config_id")),
    "rolling_update": ("owner", ("chute_id", "instance_id", "miner_hotkey", "old_version", "new_version",
                                 "reason")),
}
REASONS = frozenset(CATALOGUE)


def _public(reason: str, message: str | None = None, /, **data: Any) -> Event:
    return Event(reason, data, message)


def _owner(reason: str, hotkey: str, message: str | None = None, /, **data: Any) -> Event:
    # positional-only: rolling_update's payload has a `reason` key of its own
    return Event(reason, data, message, recipients=(hotkey,))


# -- chutes and images (AdminService) ------------------------------------------------------------------------------
def chute_created(chute_id: str, version: str, job_only: bool) -> Event:
    return _public("chute_created", f"chute {chute_id} version {version} created", chute_id=chute_id,
                   version=version, job_only=job_only)


def chute_updated(chute_id: str, version: str, job_only: bool) -> Event:
    return _public("chute_updated", f"chute {chute_id} updated to version {version}", chute_id=chute_id,
                   version=version, job_only=job_only)


def chute_deleted(chute_id: str, version: str) -> Event:
    return _public("chute_deleted", f"chute {chute_id} version {version} deleted", chute_id=chute_id,
                   version=version)


def bounty_change(chute_id: str, bounty: int) -> Event:
    """`bounty` 0 means withdrawn."""
    return _public("bounty_change", f"bounty of chute {chute_id} is now {bounty}", chute_id=chute_id,
                   bounty=bounty)


def image_created(image_id: str) -> Event:
    return _public("image_created", f"image {image_id} created", image_id=image_id)


def image_updated(image_id: str, *, short_tag: str, patch_version: str | None, chutes_version: str | None,
                  chute_ids: Sequence[str], image: str) -> Event:
    return _public("image_updated", f"image {image_id} updated to {image}", image_id=image_id,
                   short_tag=short_tag, patch_version=patch_version, chutes_version=chutes_version,
                   chute_ids=list(chute_ids), image=image)


def image_deleted(image_id: str) -> Event:
    return _public("image_deleted", f"image {image_id} deleted", image_id=image_id)


# -- jobs ------------------------------------------------------------------------------------------------------------
def job_created(*, job_id: str, method: str, chute_id: str, image_id: str, gpu_count: int,
                compute_multiplier: float, exclude: Sequence[str], job_args: dict | None) -> Event:
    """Sent by CreateJob and again by ReleaseJob. `exclude` (the reference's key) and `excluded` (the key a stock
    miner reads) carry the same hotkeys; `disk_gb` is always an integer."""
    hotkeys = list(exclude)
    return _public("job_created", f"job {job_id} ({method}) of chute {chute_id} is open", job_id=job_id,
                   method=method, chute_id=chute_id, image_id=image_id, gpu_count=gpu_count,
                   compute_multiplier=compute_multiplier, exclude=hotkeys, excluded=list(hotkeys),
                   disk_gb=job_disk_gb(job_args))


def job_deleted(*, instance_id: str, job_id: str) -> Event:
    return _public("job_deleted", f"job {job_id} ended with instance {instance_id}", instance_id=instance_id,
                   job_id=job_id)


# -- instances (launch configs, deletion) ------------------------------------------------------------------------------
def instance_created(*, chute_id: str, gpu_count: int, gpu_model_name: str, miner_hotkey: str, instance_id: str,
                     config_id: str) -> Event:
    return _owner("instance_created", miner_hotkey, f"instance {instance_id} created for config {config_id}",
                  chute_id=chute_id, gpu_count=gpu_count, gpu_model_name=gpu_model_name,
                  miner_hotkey=miner_hotkey, instance_id=instance_id, config_id=config_id)


def instance_verified(*, instance_id: str, miner_hotkey: str) -> Event:
    return _owner("instance_verified", miner_hotkey, f"instance {instance_id} verified",
                  instance_id=instance_id, miner_hotkey=miner_hotkey)


def instance_activated(*, chute_id: str, miner_hotkey: str, instance_id: str, config_id: str | None) -> Event:
    return _owner("instance_activated", miner_hotkey, f"instance {instance_id} activated", chute_id=chute_id,
                  miner_hotkey=miner_hotkey, instance_id=instance_id, config_id=config_id)


def instance_deleted(*, chute_id: str, miner_hotkey: str, instance_id: str, config_id: str | None,
                     reason: str | None = None) -> Event:
    text = f"instance {instance_id} deleted" + (f": {reason}" if reason else "")
    return _owner("instance_deleted", miner_hotkey, text, chute_id=chute_id, miner_hotkey=miner_hotkey,
                  instance_id=instance_id, config_id=config_id)


def rolling_update(*, chute_id: str, instance_id: str, miner_hotkey: str, old_version: str, new_version: str,
                   reason: str) -> Event:
    return _owner("rolling_update", miner_hotkey,
                  f"chute {chute_id} moved from {old_version} to {new_version}: replace instance {instance_id}",
                  chute_id=chute_id, instance_id=instance_id, miner_hotkey=miner_hotkey, old_version=old_version,
                  new_version=new_version, reason=reason)
