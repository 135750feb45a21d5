"""Provider status words -> InstanceState: the transient allow-list is a contract (BUG-017).

Vast reported `loading` while pulling the image, and a poller that treated it as fatal destroyed every new
instance. Anything on the allow-list means "keep waiting"; `running` is running; every other word (exited,
stopped, error, offline, an unknown new word) means the instance will not become reachable by itself.

>>> instance_state("loading"), instance_state("running"), instance_state("exited")
(<InstanceState.STARTING: 'starting'>, <InstanceState.RUNNING: 'running'>, <InstanceState.STOPPED: 'stopped'>)
"""
from __future__ import annotations

from .base import InstanceState

TRANSIENT_STATUSES = frozenset({"", "loading", "created", "creating", "starting", "provisioning", "booting"})
RUNNING_STATUSES = frozenset({"running"})


def instance_state(raw: str | None) -> InstanceState:
    word = (raw or "").strip().lower()
    if word in RUNNING_STATUSES:
        return InstanceState.RUNNING
    if word in TRANSIENT_STATUSES:
        return InstanceState.STARTING
    return InstanceState.STOPPED
