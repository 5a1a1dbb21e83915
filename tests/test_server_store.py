"""backend.pipelines.store.AvatarStore (LRU, thread-safe) and the placeholder generator's determinism."""
from __future__ import annotations

import collections
import threading

import numpy as np
import pytest

from backend.pipelines.store import AvatarStore
from bridge.wire import protocol
from bridge.wire.contract import check_arrays
from tests.placeholder_pipeline import placeholder_cloud


def test_lru_eviction_counts_gets_as_uses():
    store = AvatarStore(capacity=2)
    assert store.put("a", 1) == [] and store.put("b", 2) == []
    assert store.get("a") == 1                      # "b" is now the least recently used
    assert store.put("c", 3) == ["b"]
    assert store.ids() == ["a", "c"] and "b" not in store and store.get("b") is None
    assert store.pop("a") == 1 and len(store) == 1
    with pytest.raises(ValueError):
        store.put("", 1)
    with pytest.raises(ValueError):
        AvatarStore(capacity=0)


class _PausingItems(collections.OrderedDict):
    """The store's dict, with a window in `get`: after reading a value it waits until another thread has
    changed the dict (or 2 s passed), so a reader and a writer interleave exactly where a race would bite."""

    def __init__(self) -> None:
        super().__init__()
        self.read, self.changed = threading.Event(), threading.Event()

    def get(self, key, default=None):
        value = super().get(key, default)
        self.read.set()
        self.changed.wait(2.0)   # with the store's lock held, the writer cannot get in: the wait runs out
        return value


class _NoLock:
    def __enter__(self) -> None: ...
    def __exit__(self, *exc) -> None: ...


def _race(store: AvatarStore) -> list[BaseException]:
    """One get("x") and one pop("x") interleaved inside get; returns what the reader raised."""
    items = _PausingItems()
    items["x"] = 1
    store._items = items
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            store.get("x")   # reads, pauses, then move_to_end("x")
        except BaseException as exc:  # noqa: BLE001 - the race's symptom is what the test looks for
            errors.append(exc)

    def writer() -> None:
        items.read.wait(5.0)
        store.pop("x")
        items.changed.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    return errors


def test_the_lock_closes_the_race_between_get_and_pop():
    assert _race(AvatarStore(capacity=4)) == []
    unlocked = AvatarStore(capacity=4)
    unlocked._lock = _NoLock()   # the same race without the lock: the popped key is moved to the end
    errors = _race(unlocked)
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def test_placeholder_cloud_is_deterministic_body_shaped_and_follows_the_contract():
    a, b, c = placeholder_cloud(3, 8, n=2000), placeholder_cloud(3, 8, n=2000), placeholder_cloud(4, 8, n=2000)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert a["means"].tobytes() != c["means"].tobytes()
    assert check_arrays(a, protocol.AVATAR_ARRAYS) == {"N": 2000, "S": 16, "k": 1, "J": 1}
    means = a["means"]
    assert 0.0 <= means[:, 2].min() and means[:, 2].max() <= 1.8       # metres, Z-up, a body's height
    assert np.ptp(means[:, 2]) > 1.4 and np.ptp(means[:, 0]) < 0.9
    np.testing.assert_allclose(np.linalg.norm(a["rotations"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a["skin_weights"].sum(1), 1.0)
