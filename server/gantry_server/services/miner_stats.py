"""MinerService RPCs: stats (composed into services/miner.py). Not built yet: every RPC here answers UNIMPLEMENTED."""
from __future__ import annotations


class MinerStatsMixin:
    rt: object  # Runtime, set by MinerService
