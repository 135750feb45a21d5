"""The bounded LRU behind the inventory response caches: count and weight bounds, recency on hits."""
from __future__ import annotations

from gantry_server.lru import Lru


def test_the_least_recently_used_entry_goes_first():
    cache = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_weight_bounds_the_total_and_an_oversized_entry_is_not_kept():
    cache = Lru(10, max_weight=100)
    cache.put("a", "x", weight=60)
    cache.put("b", "y", weight=30)
    cache.put("c", "z", weight=30)  # 120 > 100: "a" goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, "y", "z") and cache.weight == 60
    cache.put("huge", "w", weight=101)
    assert cache.get("huge") is None and len(cache) == 2
    cache.put("b", "y2", weight=10)  # replacing an entry re-weighs it
    assert cache.get("b") == "y2" and cache.weight == 40
