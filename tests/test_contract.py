"""bridge.wire.contract: the one array-contract check (dtype, shape pattern, dimensions bound across arrays)."""
from __future__ import annotations

import numpy as np
import pytest

from bridge.wire import contract, protocol


def _avatar(n=5, j=3, k=2, s=1):
    return {"means": np.zeros((n, 3), "<f4"), "rotations": np.zeros((n, 4), "<f4"),
            "log_scales": np.zeros((n, 3), "<f4"), "opacity_logits": np.zeros(n, "<f4"),
            "sh": np.zeros((n, s, 3), "<f4"), "skin_indices": np.zeros((n, k), "<u2"),
            "skin_weights": np.zeros((n, k), "<f4"), "joint_parents": np.full(j, -1, "<i4"),
            "rest_matrices": np.zeros((j, 4, 4), "<f4"), "joint_tails": np.zeros((j, 3), "<f4")}


def test_binds_dimensions_across_arrays():
    assert contract.check_arrays(_avatar(), protocol.AVATAR_ARRAYS) == {"N": 5, "k": 2, "J": 3, "S": 1}
    assert contract.parse_pattern("F, J,4") == ["F", "J", 4] and contract.parse_pattern(("N", 3)) == ["N", 3]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("sh"), r"missing arrays \['sh'\]"),
    (lambda a: a.__setitem__("means", np.zeros((5, 3), "<f8")), "'means': expected dtype <f4, got <f8"),
    (lambda a: a.__setitem__("means", np.zeros((5, 2), "<f4")), r"'means': expected shape \(N,3\), got \(5, 2\)"),
    (lambda a: a.__setitem__("rotations", np.zeros((6, 4), "<f4")), "'rotations' has N=6, other arrays have N=5"),
    (lambda a: a.__setitem__("opacity_logits", np.zeros((5, 1), "<f4")), r"expected shape \(N\)"),
])
def test_names_what_is_wrong(change, message):
    arrays = _avatar()
    change(arrays)
    with pytest.raises(ValueError, match=message):
        contract.check_arrays(arrays, protocol.AVATAR_ARRAYS)


def test_the_caller_chooses_the_error_and_preset_dims():
    class WireError(Exception):
        pass

    with pytest.raises(WireError, match="J=3, other arrays have J=4"):
        contract.check_arrays(_avatar(), protocol.AVATAR_ARRAYS, {"J": 4}, error=WireError)
    with pytest.raises(WireError, match="missing array 'x'"):
        contract.check_array({}, "x", "<f4", "N", error=WireError)
