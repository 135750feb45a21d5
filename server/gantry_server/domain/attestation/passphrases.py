"""LUKS volume passphrases of a VM (miner hotkey + VM name): what a sync creates, returns, rekeys and prunes.

A VM sends the full list of volumes it manages, and the ones it wants rekeyed. Volumes with a stored passphrase
get it back (the same one every boot, so the disk opens); new volumes and rekeyed ones get a fresh 128-hex
passphrase from the CSPRNG (a rekey never reuses the old one); stored volumes not in the list are pruned.
Passphrases are stored only as Keyring envelopes bound to (hotkey, VM, volume), so a blob copied to another
row, VM or miner does not decrypt, and nothing is readable in the database without the KEK.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

SUPPORTED_VOLUMES = ("storage", "tdx-cache", "chutefs-data")
LEGACY_CACHE_VOLUME = "storage"  # what the legacy GET /servers/{vm}/luks returns


def new_passphrase() -> str:
    """128 hex characters (512 bits) from the OS CSPRNG, as the reference's token_hex(64)."""
    return secrets.token_hex(64)


def context(hotkey: str, vm_name: str, volume: str) -> bytes:
    """Associated data binding a passphrase blob to its row."""
    return f"luks:{hotkey}:{vm_name}:{volume}".encode()


def volume_problems(volumes: list[str], rekey: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not volumes:
        out.append(("volumes", "must list at least one volume"))
    supported = ", ".join(SUPPORTED_VOLUMES)
    for i, v in enumerate(volumes):
        if v not in SUPPORTED_VOLUMES:
            out.append((f"volumes[{i}]", f"unsupported volume {v!r} (supported: {supported})"))
    if len(set(volumes)) != len(volumes):
        out.append(("volumes", "lists a volume twice"))
    for i, v in enumerate(rekey):
        if v not in volumes:
            out.append((f"rekey[{i}]", f"{v!r} is not in volumes (rekey must be a subset of volumes)"))
    return out


@dataclass(frozen=True)
class SyncPlan:
    reuse: tuple[str, ...]  # stored passphrase returned as is
    create: tuple[str, ...]  # new passphrase: new volume or rekeyed
    prune: tuple[str, ...]  # stored but no longer managed: deleted


def plan(stored: set[str], volumes: list[str], rekey: list[str]) -> SyncPlan:
    """
    >>> plan({"storage", "tdx-cache"}, ["storage", "chutefs-data"], ["storage"])
    SyncPlan(reuse=(), create=('storage', 'chutefs-data'), prune=('tdx-cache',))
    """
    rekeyed = set(rekey)
    return SyncPlan(
        reuse=tuple(v for v in volumes if v in stored and v not in rekeyed),
        create=tuple(v for v in volumes if v not in stored or v in rekeyed),
        prune=tuple(sorted(stored - set(volumes))))
