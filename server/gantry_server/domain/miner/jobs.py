"""Jobs as miners see them: the job_created announcement of an open job (CreateJob, ReleaseJob, and the replay
a Socket.IO miner gets after authenticating)."""
from __future__ import annotations

from typing import Mapping

from ..events.catalogue import Event, job_created
from ..launch.launcher import starting_multiplier
from .reference import gpu_count


def job_compute_multiplier(job: Mapping, chute: Mapping) -> float:
    """What an instance running the job starts at: the job's own multiplier, else the chute's private rate."""
    value, _, _ = starting_multiplier(chute, gpu_count(chute["node_selector"]), private=True, job=job)
    return value


def job_created_event(job: Mapping, chute: Mapping) -> Event:
    """The job_created event of an open job; `exclude`/`excluded` name the miners that already tried it."""
    return job_created(job_id=job["job_id"], method=job["method"], chute_id=job["chute_id"],
                       image_id=chute["image_id"], gpu_count=gpu_count(chute["node_selector"]),
                       compute_multiplier=job_compute_multiplier(job, chute),
                       exclude=list(job["miner_history"] or []), job_args=job["job_args"])
