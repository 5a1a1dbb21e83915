"""The array contract, checked once: a named array's dtype and its shape against a pattern such as "N,3"
or "F,J,4" (bridge.wire.protocol's AVATAR_ARRAYS and RENDER_ARRAYS), with dimension letters bound across
arrays; `check_range` holds values to a range. numpy + stdlib only: the server's admission
(backend/service/server.py), the backend's render check (backend/service/handlers.py), the avatar file
reader (bridge/files/avatar.py) and the Blender add-on's import all call `check_arrays` here; there is no
other copy.

The error type is the caller's: the wire side passes `bridge.wire.codec.bad_array` (ProtocolError with
E_BAD_ARRAY), the backend's handlers a HandlerError factory, the add-on a ValueError (the default).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

ErrorFactory = Callable[[str], Exception]


def parse_pattern(shape_pattern: str | Sequence[Any]) -> list[str | int]:
    """"N,3" -> ["N", 3]; a sequence is taken item by item (ints stay ints, digit strings become ints)."""
    items = shape_pattern.split(",") if isinstance(shape_pattern, str) else list(shape_pattern)
    out: list[str | int] = []
    for item in items:
        if isinstance(item, (int, np.integer)):
            out.append(int(item))
            continue
        text = str(item).strip()
        if text:
            out.append(int(text) if text.isdigit() else text)
    return out


def check_array(arrays: Mapping[str, np.ndarray], name: str, dtype: Any, shape_pattern: str | Sequence[Any],
                dims: dict[str, int] | None = None, error: ErrorFactory = ValueError) -> np.ndarray:
    """arrays[name], checked: present, of `dtype` exactly, with as many axes as the pattern, numbers equal
    and letters equal to what `dims` bound them to (binding them on first use). Returns the array."""
    dims = {} if dims is None else dims
    pattern = parse_pattern(shape_pattern)
    shown = ",".join(map(str, pattern))
    if name not in arrays:
        raise error(f"missing array {name!r} ({np.dtype(dtype).str} ({shown}))")
    a = arrays[name]
    want = np.dtype(dtype)
    if np.dtype(a.dtype) != want:
        raise error(f"array {name!r}: expected dtype {want.str}, got {np.dtype(a.dtype).str}")
    if a.ndim != len(pattern):
        raise error(f"array {name!r}: expected shape ({shown}), got {tuple(a.shape)}")
    for sym, size in zip(pattern, a.shape):
        if isinstance(sym, int):
            if sym != size:
                raise error(f"array {name!r}: expected shape ({shown}), got {tuple(a.shape)}")
        elif dims.setdefault(sym, int(size)) != size:
            raise error(f"array {name!r} has {sym}={size}, other arrays have {sym}={dims[sym]}")
    return a


def check_arrays(arrays: Mapping[str, np.ndarray], spec: Mapping[str, tuple[Any, str]],
                 dims: dict[str, int] | None = None, error: ErrorFactory = ValueError, *,
                 optional: Iterable[str] = (), allow_extra: bool = True) -> dict[str, int]:
    """Every array of `spec` (name -> (dtype, shape pattern)) checked with one `dims`; returns it. Names in
    `optional` may be absent; with allow_extra=False an array `spec` does not name is an error too."""
    dims = {} if dims is None else dims
    optional = frozenset(optional)
    missing = sorted(set(spec) - set(arrays) - optional)
    extra = [] if allow_extra else sorted(set(arrays) - set(spec))
    if missing or extra:
        wrong = [f"{what} arrays {names}" for what, names in (("missing", missing), ("unexpected", extra)) if names]
        expected = f"expected {sorted(spec)}{f', {sorted(optional)} optional' if optional else ''}"
        raise error(f"{'; '.join(wrong)} ({expected})" if spec else f"{'; '.join(wrong)} (it takes no arrays)")
    for name, (dtype, pattern) in spec.items():
        if name in arrays:
            check_array(arrays, name, dtype, pattern, dims, error)
    return dims


def check_range(values: np.ndarray, name: str, low: float, high: float, what: str = "value",
                low_inclusive: bool = True, error: ErrorFactory = ValueError) -> None:
    """Every element of `values` finite and within [low, high] (low excluded when not low_inclusive);
    else `error` naming the array, the first bad element's index, its value and the range. NaN and inf fail."""
    v = np.asarray(values)
    with np.errstate(invalid="ignore"):
        above_low = v >= low if low_inclusive else v > low
        bad = ~(np.isfinite(v) & above_low & (v <= high))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        opening = "[" if low_inclusive else "("
        raise error(f"{name}{list(index)}: {float(v[index]):.4g} ({what}) is outside {opening}{low:g}, {high:g}]")
