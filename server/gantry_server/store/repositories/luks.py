"""vm_cache_configs and vm_luks_passphrases: a VM's LUKS volume passphrases, stored as Keyring envelopes only."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import vm_cache_configs as vms
from ..models import vm_luks_passphrases as keys


class LuksRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def lock_vm(self, hotkey: str, vm_name: str, now: datetime) -> None:
        """Create the VM's row if needed and hold its lock for the transaction: syncs of one VM run one at a time."""
        await self.conn.execute(insert(vms).values(miner_hotkey=hotkey, vm_name=vm_name, created_at=now)
                                .on_conflict_do_nothing())
        await self.conn.execute(select(vms.c.vm_name).where(vms.c.miner_hotkey == hotkey, vms.c.vm_name == vm_name)
                                .with_for_update())

    async def ciphertexts(self, hotkey: str, vm_name: str) -> dict[str, bytes]:
        rows = await self.conn.execute(select(keys.c.volume, keys.c.ciphertext)
                                       .where(keys.c.miner_hotkey == hotkey, keys.c.vm_name == vm_name))
        return {r.volume: bytes(r.ciphertext) for r in rows}

    async def ciphertext(self, hotkey: str, vm_name: str, volume: str) -> bytes | None:
        value = await self.conn.scalar(select(keys.c.ciphertext).where(
            keys.c.miner_hotkey == hotkey, keys.c.vm_name == vm_name, keys.c.volume == volume))
        return None if value is None else bytes(value)

    async def put(self, hotkey: str, vm_name: str, volume: str, ciphertext: bytes, now: datetime) -> None:
        stmt = insert(keys).values(miner_hotkey=hotkey, vm_name=vm_name, volume=volume, ciphertext=ciphertext,
                                   created_at=now)
        await self.conn.execute(stmt.on_conflict_do_update(
            index_elements=[keys.c.miner_hotkey, keys.c.vm_name, keys.c.volume],
            set_={"ciphertext": stmt.excluded.ciphertext, "created_at": stmt.excluded.created_at}))

    async def prune(self, hotkey: str, vm_name: str, volumes: list[str]) -> None:
        if volumes:
            await self.conn.execute(delete(keys).where(keys.c.miner_hotkey == hotkey, keys.c.vm_name == vm_name,
                                                       keys.c.volume.in_(volumes)))

    async def booted(self, hotkey: str, vm_name: str, now: datetime) -> None:
        await self.conn.execute(update(vms).where(vms.c.miner_hotkey == hotkey, vms.c.vm_name == vm_name)
                                .values(last_boot_at=now, updated_at=now))
