"""Frames <-> (header, arrays): the msgpack header plus raw array frames of bridge.wire.protocol.

    frames = encode({"v": 1, "id": "a1", "op": "ping"}, {"means": means})
    header, arrays = decode(frames, max_bytes=1 << 30)

No pickle and no copies: `encode` hands out memoryviews of the arrays (C-contiguous little-endian ones
as they are; others are converted once), `decode` wraps every frame with `np.frombuffer` (the arrays
are read-only views on the received frames). msgpack runs with raw=False, strict_map_key and without
ext types; every array spec is checked (name, dtype from an allow-list, shape, byte length) before any
array is built. Problems raise `ProtocolError(code, message)` with a code from bridge.wire.protocol and a
message that names the bad value and what was expected.

Also here: typed requests to and from headers (`request_header`, `request_from_header`) and the array
contract checks the backend runs on its inputs (`check_array`, `check_arrays`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np

from bridge.wire import protocol
from bridge.wire.protocol import PROTOCOL_VERSION, Request

# The dtypes allowed on the wire, by their spec string. Multi-byte types are little-endian ("<");
# one-byte types have no byte order and numpy spells them with "|" (both "|u1" and "<u1" are accepted).
_DTYPE_CODES = ("u1", "i1", "b1", "u2", "i2", "f2", "u4", "i4", "f4", "u8", "i8", "f8")
WIRE_DTYPES: dict[str, np.dtype] = {}
for _code in _DTYPE_CODES:
    WIRE_DTYPES["<" + _code] = np.dtype("<" + _code)
    if _code.endswith("1"):
        WIRE_DTYPES["|" + _code] = np.dtype(_code)
del _code

MAX_HEADER_BYTES = 1 << 20      # a header is metadata; 1 MiB is far above any real one
MAX_ID_CHARS = 128
MAX_NDIM = 16
MAX_ARRAYS = 256
MAX_NESTING = 16
MAX_ARRAY_EXTENT = 1 << 48      # bytes a shape may describe (zero-length axes counted as 1)
_SPEC_KEYS = frozenset(("name", "dtype", "shape"))
RESERVED_KEYS = frozenset(("v", "id", "op", "kind", "arrays"))


class ProtocolError(Exception):
    """A message that breaks the protocol. `code` is one of bridge.wire.protocol.ERROR_CODES; `request_id`
    is the id of the offending message when its header could be read that far (else "")."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


# ---------------------------------------------------------------------------------------- encoding
def _msgpack_default(value: Any) -> Any:
    # numpy scalars (np.float32(1.0), np.int64(3)) are common in handler output; lists of them too
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 64 and value.dtype.kind in "biuf":
        return value.tolist()
    raise TypeError(f"header value {value!r} of type {type(value).__name__} cannot go on the wire "
                    f"(use str, int, float, bool, None, bytes, list or dict; large arrays go in `arrays`)")


def wire_array(name: str, array: Any) -> np.ndarray:
    """`array` as a C-contiguous little-endian ndarray of an allowed dtype (the same object when it
    already is one, so that nothing is copied)."""
    a = np.asarray(array)
    dt = a.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False and dt.itemsize > 1):
        a = a.astype(dt.newbyteorder("<"))
        dt = a.dtype
    if dt.str not in WIRE_DTYPES:
        raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: dtype {dt} cannot go on the wire "
                            f"(allowed: {', '.join(sorted(WIRE_DTYPES))})")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def encode(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> list[Any]:
    """[msgpack header, raw buffer per array]. The header gains "arrays": one spec per array, in order.
    The buffers are memoryviews of the arrays (zero-copy): keep the arrays alive and unchanged until
    the frames are sent (pyzmq `track=True` says when)."""
    specs: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    for name, value in (arrays or {}).items():
        if not isinstance(name, str) or not name:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array names must be non-empty str, got {name!r}")
        a = wire_array(name, value)
        specs.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        buffers.append(memoryview(a.reshape(-1).view(np.uint8)))
    full = dict(header)
    full["arrays"] = specs
    try:
        head = msgpack.packb(full, use_bin_type=True, default=_msgpack_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(protocol.E_INVALID, f"header cannot be encoded: {exc}",
                            str(header.get("id", ""))) from None
    return [head, *buffers]


# ---------------------------------------------------------------------------------------- decoding
def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _check_plain(value: Any, path: str, depth: int = 0) -> None:
    """Only plain msgpack values (no Timestamp, no ext), nested at most MAX_NESTING deep."""
    if depth > MAX_NESTING:
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"header nests deeper than {MAX_NESTING} at {path}")
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(protocol.E_BAD_MESSAGE, f"header key {key!r} at {path} is not a str")
            _check_plain(item, f"{path}.{key}", depth + 1)
        return
    raise ProtocolError(protocol.E_BAD_MESSAGE, f"header value at {path} has type {type(value).__name__}; "
                        f"only nil, bool, int, float, str, bin, array and map are allowed")


def _frame_bytes(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)       # zmq.Frame (recv copy=False)
    view = memoryview(buf if buf is not None else frame)
    return view if view.ndim == 1 and view.format in ("B", "b", "c") else view.cast("B")


def peek_id(frames: Sequence[Any], max_entries: int = 64) -> str:
    """The request id of a message, best effort (for error replies to messages that fail to decode).
    Reads the header map entry by entry and stops at "id", so a header too large (or too broken) to
    decode whole still gives its id when "id" comes early (BridgeClient puts v, id, op first)."""
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_reject_ext,
                                    max_buffer_size=MAX_HEADER_BYTES * 64)
        unpacker.feed(_frame_bytes(frames[0]))
        for _ in range(min(unpacker.read_map_header(), max_entries)):
            key = unpacker.unpack()
            if key == "id":
                rid = unpacker.unpack()
                return rid if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS else ""
            unpacker.skip()
    except Exception:
        pass
    return ""


def decode_header(frame: Any) -> dict[str, Any]:
    """The header frame as a checked dict: a map with int "v" == PROTOCOL_VERSION, str "id", and a str
    "op" (request) or "kind" (reply)."""
    raw = _frame_bytes(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(protocol.E_TOO_LARGE, f"header is {len(raw)} bytes, the limit is {MAX_HEADER_BYTES}",
                            peek_id([raw]))
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"header frame is not valid msgpack: "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"header must be a msgpack map, got {type(header).__name__}")
    rid = header.get("id")
    request_id = rid if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS else ""
    try:
        _check_plain(header, "header")
    except ProtocolError as exc:
        exc.request_id = request_id
        raise
    if not isinstance(rid, str):
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"header field 'id' must be a str, got {rid!r}")
    if len(rid) > MAX_ID_CHARS:
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"header field 'id' is {len(rid)} characters, "
                            f"at most {MAX_ID_CHARS} allowed")
    v = header.get("v")
    if "v" not in header:
        raise ProtocolError(protocol.E_BAD_MESSAGE, "header has no 'v' (protocol version)", rid)
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(protocol.E_BAD_VERSION, f"protocol version {v!r} is not supported; "
                            f"this side speaks version {PROTOCOL_VERSION}", rid)
    op, kind = header.get("op"), header.get("kind")
    if op is None and kind is None:
        raise ProtocolError(protocol.E_BAD_MESSAGE, "header has neither 'op' (request) nor 'kind' (reply)", rid)
    for key, value in (("op", op), ("kind", kind)):
        if value is not None and not isinstance(value, str):
            raise ProtocolError(protocol.E_BAD_MESSAGE, f"header field {key!r} must be a str, got {value!r}", rid)
    return header


def _array_specs(header: dict[str, Any], rid: str) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise ProtocolError(protocol.E_BAD_ARRAY, f"header field 'arrays' must be a list, got {specs!r}", rid)
    if len(specs) > MAX_ARRAYS:
        raise ProtocolError(protocol.E_BAD_ARRAY, f"{len(specs)} arrays, at most {MAX_ARRAYS} allowed", rid)
    out: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != _SPEC_KEYS:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array spec {i} must be a map with exactly the keys "
                                f"name, dtype, shape; got {spec!r}", rid)
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array spec {i}: name must be a non-empty str "
                                f"(<= 128 chars), got {name!r}", rid)
        if name in seen:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r} is listed twice", rid)
        seen.add(name)
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: dtype {dtype!r} is not allowed "
                                f"(allowed: {', '.join(sorted(WIRE_DTYPES))})", rid)
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or any(type(d) is not int or d < 0 for d in shape)):
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: shape must be a list of at most "
                                f"{MAX_NDIM} non-negative ints, got {shape!r}", rid)
        # numpy refuses shapes whose element count overflows (even when another axis is 0, as in
        # [0, 2**62]); no real array comes near 2**48 elements, so refuse them here as bad_array
        if math.prod(max(d, 1) for d in shape) * WIRE_DTYPES[dtype].itemsize > MAX_ARRAY_EXTENT:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: shape {shape} describes more than "
                                f"{MAX_ARRAY_EXTENT} bytes (counting zero-length axes as 1)", rid)
        out.append((name, WIRE_DTYPES[dtype], tuple(shape)))
    return out


def decode(frames: Sequence[Any], max_bytes: int = 1 << 30) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) from [header, array frames...]; the arrays are read-only views on the frames."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError(protocol.E_BAD_MESSAGE, "a message needs at least one frame (the msgpack header)")
    views = [_frame_bytes(f) for f in frames]
    total = sum(len(v) for v in views)
    if total > max_bytes:
        raise ProtocolError(protocol.E_TOO_LARGE, f"message is {total} bytes, the limit is {max_bytes}",
                            peek_id(frames))
    header = decode_header(views[0])
    rid = header["id"]
    specs = _array_specs(header, rid)
    if len(views) - 1 != len(specs):
        raise ProtocolError(protocol.E_BAD_ARRAY, f"header lists {len(specs)} arrays but {len(views) - 1} "
                            f"array frames follow", rid)
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape), view in zip(specs, views[1:]):
        expected = math.prod(shape) * dtype.itemsize
        if len(view) != expected:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: expected {expected} bytes for "
                                f"{dtype.name} {shape}, got {len(view)}", rid)
        array = np.frombuffer(view, dtype=dtype).reshape(shape)
        array.flags.writeable = False  # a view on a wire buffer: copy before changing it
        arrays[name] = array
    header.pop("arrays", None)
    return header, arrays


# ---------------------------------------------------------------------------------------- requests
def request_header(request: Request) -> dict[str, Any]:
    """The header of a typed request (without "arrays")."""
    if not request.op:
        raise ValueError(f"{type(request).__name__} has no op")
    fields = request.header_fields()
    return {"v": PROTOCOL_VERSION, "id": request.id, "op": request.op,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


@functools.lru_cache(maxsize=None)
def _field_types(cls: type[Request]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "id"}


def _coerce(op: str, name: str, value: Any, hint: Any, rid: str) -> Any:
    def bad(expected: str) -> ProtocolError:
        return ProtocolError(protocol.E_INVALID, f"{op}: field {name!r} must be {expected}, got {value!r}", rid)

    if hint is str:
        if not isinstance(value, str):
            raise bad("a str")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("a bool")
        return value
    if hint is int:
        if type(value) is not int:
            raise bad("an int")
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise bad("a number")
        return float(value)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad(f"a list of {len(args)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(op, f"{name}[{i}]", v, args[0], rid) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(_coerce(op, f"{name}[{i}]", v, t, rid) for i, (v, t) in enumerate(zip(value, args)))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad("a list")
        return [_coerce(op, f"{name}[{i}]", v, item, rid) for i, v in enumerate(value)]
    return value  # Any / dict fields: plain msgpack values, already checked


def request_from_header(header: Mapping[str, Any],
                        types: Mapping[str, type[Request]] | None = None) -> Request:
    """The typed request a decoded header describes; every field is type-checked (E_INVALID names the
    field), unknown fields are refused, missing ones take their defaults."""
    types = protocol.REQUEST_TYPES if types is None else types
    rid = str(header.get("id", ""))
    op = header.get("op")
    if not isinstance(op, str):
        raise ProtocolError(protocol.E_BAD_MESSAGE, f"a request needs a str 'op', got {op!r}", rid)
    cls = types.get(op)
    if cls is None:
        raise ProtocolError(protocol.E_UNKNOWN_OP, f"unknown op {op!r}; known ops: {', '.join(types)}", rid)
    hints = _field_types(cls)
    unknown = sorted(k for k in header if k not in RESERVED_KEYS and k not in hints)
    if unknown:
        raise ProtocolError(protocol.E_INVALID, f"{op}: unknown field(s) {unknown}; "
                            f"{op} takes {sorted(hints) or 'no fields'}", rid)
    values = {name: _coerce(op, name, header[name], hint, rid) for name, hint in hints.items() if name in header}
    return cls(id=rid, **values)


# ---------------------------------------------------------------------------------------- array contracts
def check_array(arrays: Mapping[str, np.ndarray], name: str, dtype: str, shape_pattern: str | Sequence[Any],
                dims: dict[str, int] | None = None) -> np.ndarray:
    """arrays[name], checked against a dtype and a shape pattern such as "N,3" or "F,J,4".

    Letters are dimensions bound on first use in `dims` (shared across calls, so "N" must agree between
    means and rotations); integers must match exactly. Raises ProtocolError(E_BAD_ARRAY) naming the array,
    the expectation and what arrived.
    """
    dims = {} if dims is None else dims
    pattern = [p.strip() for p in shape_pattern.split(",")] if isinstance(shape_pattern, str) else list(shape_pattern)
    pattern = [p for p in pattern if p != ""]
    if name not in arrays:
        raise ProtocolError(protocol.E_BAD_ARRAY, f"missing array {name!r} ({dtype} ({', '.join(map(str, pattern))}))")
    a = arrays[name]
    want = np.dtype(dtype)
    if a.dtype != want:
        raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: expected dtype {want.str}, got {a.dtype.str}")
    if a.ndim != len(pattern):
        raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: expected shape ({', '.join(map(str, pattern))}), "
                            f"got {a.shape}")
    for axis, (p, size) in enumerate(zip(pattern, a.shape)):
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit()):
            if size != int(p):
                raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: axis {axis} must be {p} "
                                    f"(shape ({', '.join(map(str, pattern))})), got {a.shape}")
        elif p in dims and dims[p] != size:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"array {name!r}: axis {axis} is {p} = {dims[p]} elsewhere, "
                                f"got {size} (shape {a.shape})")
        else:
            dims[p] = size
    return a


def check_arrays(arrays: Mapping[str, np.ndarray], contract: Mapping[str, tuple[str, str]],
                 dims: dict[str, int] | None = None, *, optional: Iterable[str] = (),
                 allow_extra: bool = False) -> dict[str, int]:
    """Check every array of a contract (e.g. protocol.RENDER_ARRAYS); returns the bound dimensions."""
    dims = {} if dims is None else dims
    optional = set(optional)
    for name, (dtype, pattern) in contract.items():
        if name in optional and name not in arrays:
            continue
        check_array(arrays, name, dtype, pattern, dims)
    if not allow_extra:
        extra = sorted(set(arrays) - set(contract))
        if extra:
            raise ProtocolError(protocol.E_BAD_ARRAY, f"unexpected array(s) {extra}; expected {sorted(contract)}")
    return dims
