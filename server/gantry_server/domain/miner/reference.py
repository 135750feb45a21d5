"""Facts about chutes, images and jobs that miner rows and events both state, computed in one place.

    >>> image_reference("Alice", "VLLM", "0.9", "p1")
    'alice/vllm:0.9-p1'
    >>> image_reference("alice", "vllm", "0.9", "initial")
    'alice/vllm:0.9'
    >>> job_disk_gb({"_disk_gb": 250})
    250
    >>> job_disk_gb({})
    10
"""
from __future__ import annotations

from typing import Any, Mapping

DEFAULT_JOB_DISK_GB = 10  # a job whose arguments name no `_disk_gb` gets this much scratch disk


def image_reference(username: str, name: str, tag: str, patch_version: str | None) -> str:
    """What a miner pulls: "{owner}/{name}:{tag}" lowercased, "-{patch_version}" appended unless it is null or
    "initial" (reference §6.12)."""
    ref = f"{username}/{name}:{tag}"
    if patch_version and patch_version != "initial":
        ref += f"-{patch_version}"
    return ref.lower()


def job_disk_gb(job_args: Mapping[str, Any] | None) -> int:
    """Scratch disk of a job in GB: always an integer (a stock miner indexes `disk_gb` and sizes a volume by it).
    The launch JWT carries the same value."""
    value = (job_args or {}).get("_disk_gb")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return DEFAULT_JOB_DISK_GB


def gpu_count(node_selector: Mapping[str, Any] | None) -> int:
    """GPUs one instance of the chute needs (node_selector.gpu_count, validated 1..8 at upsert)."""
    value = (node_selector or {}).get("gpu_count")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def job_only(cords: list | None, jobs: list | None) -> bool:
    """A chute that declares jobs and exposes no cords only ever runs as a job (a miner does not scale it)."""
    return bool(jobs) and not cords
