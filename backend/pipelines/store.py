"""AvatarStore: the avatars the service holds in memory, by id (bounded, least recently used evicted)."""
from __future__ import annotations

import collections
import threading
from typing import Any


class AvatarStore:
    """A thread-safe LRU of avatars. Values are opaque (an avatar record, Gaussians, ...); `get` and `put`
    both count as a use. The oldest avatar is evicted when more than `capacity` are stored."""

    def __init__(self, capacity: int = 32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, avatar_id: str, avatar: Any) -> list[str]:
        """Store (or replace) an avatar; returns the ids evicted to make room."""
        if not isinstance(avatar_id, str) or not avatar_id:
            raise ValueError(f"avatar id must be a non-empty str, got {avatar_id!r}")
        with self._lock:
            self._items[avatar_id] = avatar
            self._items.move_to_end(avatar_id)
            evicted = []
            while len(self._items) > self.capacity:
                evicted.append(self._items.popitem(last=False)[0])
            return evicted

    def get(self, avatar_id: str) -> Any | None:
        with self._lock:
            avatar = self._items.get(avatar_id)
            if avatar is not None:
                self._items.move_to_end(avatar_id)
            return avatar

    def pop(self, avatar_id: str) -> Any | None:
        with self._lock:
            return self._items.pop(avatar_id, None)

    def ids(self) -> list[str]:
        """Ids from least to most recently used."""
        with self._lock:
            return list(self._items)

    def __contains__(self, avatar_id: object) -> bool:
        with self._lock:
            return avatar_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
