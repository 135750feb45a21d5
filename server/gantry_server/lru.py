"""A small bounded least-recently-used map (response caches keyed by snapshot generation).

    cache = Lru(256, max_weight=64 << 20)
    value = cache.get(key)                 # None when absent; a hit becomes the most recent entry
    cache.put(key, value, weight=len(b))   # evicts least recently used entries beyond `size` or `max_weight`

An entry heavier than `max_weight` is not kept at all.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")


class Lru(Generic[V]):
    def __init__(self, size: int, *, max_weight: int | None = None) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self.max_weight = max_weight
        self.weight = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: V, *, weight: int = 1) -> None:
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        if self.max_weight is not None and weight > self.max_weight:
            return
        items[key] = (value, weight)
        self.weight += weight
        while len(items) > self.size or (self.max_weight is not None and self.weight > self.max_weight):
            _, (_, dropped) = items.popitem(last=False)
            self.weight -= dropped

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.weight = 0
