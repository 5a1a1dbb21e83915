"""backend.pipelines.store.AvatarStore (LRU, thread-safe) and the placeholder generator's determinism."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.pipelines.store import AvatarStore
from bridge.wire import protocol
from bridge.wire.codec import check_arrays
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


def test_store_is_thread_safe():
    store = AvatarStore(capacity=50)

    def work(t: int) -> None:
        for i in range(2000):
            store.put(f"{t}-{i}", i)
            store.get(f"{t}-{i // 2}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 50 and len(set(store.ids())) == 50


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
