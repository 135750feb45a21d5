"""Back every instance of a fake provider with a real SSH server (providers/simulated_host.SshHost).

    pool = SshHostPool(tmp_path).attach(fake)       # before creating instances
    ...                                             # ssh -p <reported port> <user>@127.0.0.1 with the session key
    await pool.aclose()

Each host accepts exactly the keys the fake says the instance would accept (Vast: the create key plus attached keys;
TensorDock: only keys installed by the cloud-init runcmd), for the provider's login name (root / user), and stops
when the instance is deleted or vanishes, so "destroyed" is observable as a refused connection.
"""
from __future__ import annotations

from pathlib import Path

from gantry_server.providers.simulated_host import SshHost

from .base import FakeInstance, FakeProvider


class SshHostPool:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.hosts: dict[str, SshHost] = {}  # instance id -> its SSH server (while the instance exists)

    def attach(self, fake: FakeProvider) -> "SshHostPool":
        fake.on_instance_created = self._created
        fake.on_keys_changed = self._keys_changed
        fake.on_instance_destroyed = self._destroyed
        return self

    async def _created(self, inst: FakeInstance) -> tuple[str, int]:
        workdir = self.root / f"instance-{inst.id}" if self.root is not None else None
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        host = self.hosts[inst.id] = SshHost(workdir, user=inst.ssh_user)
        return await host.start(inst.authorized_keys)

    async def _keys_changed(self, inst: FakeInstance) -> None:
        if (host := self.hosts.get(inst.id)) is not None:
            host.set_authorized_keys(inst.authorized_keys)

    async def _destroyed(self, inst: FakeInstance) -> None:
        if (host := self.hosts.pop(inst.id, None)) is not None:
            await host.stop()

    async def aclose(self) -> None:
        for host in list(self.hosts.values()):
            await host.stop()
        self.hosts.clear()
